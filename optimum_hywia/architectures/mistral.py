"""Mistral: the Llama layout (GQA, SwiGLU) with sliding-window attention, which pruning does not touch."""

from dataclasses import replace

from .llama import LLAMA

MISTRAL = replace(LLAMA, name="Mistral", model_types=("mistral",), bias_switches=())
