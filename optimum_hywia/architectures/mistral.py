"""Mistral: the Llama layout with sliding-window attention."""

from .base import ArchitectureSpec
from .llama import LLAMA_ATTENTION, LLAMA_MLP

MISTRAL = ArchitectureSpec(
    name="Mistral",
    model_types=("mistral",),
    layers="model.layers",
    attention=LLAMA_ATTENTION,
    mlp=LLAMA_MLP,
)
