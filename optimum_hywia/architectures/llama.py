"""Llama family: LLaMA-1/2/3, Vicuna, SmolLM2 (separate q/k/v/o, SwiGLU MLP, GQA)."""

from .base import ArchitectureSpec, Projection

ATTENTION = (
    Projection("self_attn.q_proj", "out", "q_heads"),
    Projection("self_attn.k_proj", "out", "kv_heads"),
    Projection("self_attn.v_proj", "out", "kv_heads"),
    Projection("self_attn.o_proj", "in", "q_heads"),
)
MLP = (
    Projection("mlp.gate_proj", "out", "channels"),
    Projection("mlp.up_proj", "out", "channels"),
    Projection("mlp.down_proj", "in", "channels"),
)

LLAMA = ArchitectureSpec(
    name="Llama",
    model_types=("llama",),
    layers="model.layers",
    attention=ATTENTION,
    mlp=MLP,
    bias_switches=(("attention", "attention_bias"), ("mlp", "mlp_bias")),
    residual_points=(("attention", "post_attention_layernorm"), ("mlp", "")),
)
