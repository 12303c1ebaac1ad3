"""Qwen2: the Llama layout with q/k/v biases, which are sliced with their rows."""

from dataclasses import replace

from .llama import LLAMA

QWEN2 = replace(LLAMA, name="Qwen2", model_types=("qwen2",), bias_switches=())
