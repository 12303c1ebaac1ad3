"""Phi-3: fused `qkv_proj` = [q | k | v] rows and fused `gate_up_proj` = [gate | up] rows."""

from .base import ArchitectureSpec, Projection

PHI3 = ArchitectureSpec(
    name="Phi-3",
    model_types=("phi3",),
    layers="model.layers",
    attention=(
        Projection("self_attn.qkv_proj", "out", ("q_heads", "kv_heads", "kv_heads")),
        Projection("self_attn.o_proj", "in", "q_heads"),
    ),
    mlp=(
        Projection("mlp.gate_up_proj", "out", ("channels", "channels")),
        Projection("mlp.down_proj", "in", "channels"),
    ),
    hidden_divisible_by_heads=False,
    residual_points=(("attention", "post_attention_layernorm"), ("mlp", "")),
    # the attention splits the fused QKV at `self.config.num_attention_heads * head_dim`
    layer_config=(("self_attn", "num_attention_heads", "num_heads"),),
    notes="splits qkv at config.num_attention_heads: per-layer checkpoints give each attention its own config",
)
