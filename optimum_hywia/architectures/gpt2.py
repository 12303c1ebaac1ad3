"""GPT-2: `Conv1D` layers (weights stored [in, out]) and a fused `c_attn` = [q | k | v] columns of the weight."""

from .base import ArchitectureSpec, ConfigKeys, Projection

GPT2 = ArchitectureSpec(
    name="GPT-2",
    model_types=("gpt2",),
    layers="transformer.h",
    attention=(
        Projection("attn.c_attn", "out", ("q_heads", "kv_heads", "kv_heads")),
        Projection("attn.c_proj", "in", "q_heads"),
    ),
    mlp=(
        Projection("mlp.c_fc", "out", "channels"),
        Projection("mlp.c_proj", "in", "channels"),
    ),
    config_keys=ConfigKeys(
        num_layers="n_layer",
        hidden_size="n_embd",
        num_heads="n_head",
        num_kv_heads=None,
        head_dim=None,
        intermediate_size="n_inner",
    ),
    hidden_divisible_by_heads=False,
    residual_points=(("attention", "ln_2"), ("mlp", "")),
    residual_attributes=("attn.embed_dim",),
    attention_width_attributes=("attn.split_size",),  # c_attn output is split at split_size
    notes="Conv1D (transposed weights); head_dim = n_embd // n_head: pruned heads need the override",
)
