"""Qwen2: the Llama layout with q/k/v biases (sliced with their rows)."""

from .base import ArchitectureSpec
from .llama import LLAMA_ATTENTION, LLAMA_MLP

QWEN2 = ArchitectureSpec(
    name="Qwen2",
    model_types=("qwen2",),
    layers="model.layers",
    attention=LLAMA_ATTENTION,
    mlp=LLAMA_MLP,
)
