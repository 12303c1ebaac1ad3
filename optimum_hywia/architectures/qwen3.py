"""Qwen3: the Llama layout with an explicit `head_dim` and per-head q/k RMSNorms over `head_dim`.

The norms act inside each head, so they are shared by every head and never sliced; `head_dim` is never pruned.
"""

from dataclasses import replace

from .llama import LLAMA

QWEN3 = replace(
    LLAMA,
    name="Qwen3",
    model_types=("qwen3",),
    hidden_divisible_by_heads=False,
    bias_switches=(("attention", "attention_bias"),),
    notes="q_norm/k_norm act on head_dim (never pruned); explicit head_dim",
)
