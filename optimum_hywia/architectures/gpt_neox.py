"""GPT-NeoX / Pythia: fused `query_key_value` interleaved per head as [n_head, 3, head_dim]."""

from .base import ArchitectureSpec, ConfigKeys, Projection

GPT_NEOX = ArchitectureSpec(
    name="GPT-NeoX",
    model_types=("gpt_neox",),
    layers="gpt_neox.layers",
    attention=(
        Projection("attention.query_key_value", "out", ("q_heads", "kv_heads", "kv_heads"), layout="per_group"),
        Projection("attention.dense", "in", "q_heads"),
    ),
    mlp=(
        Projection("mlp.dense_h_to_4h", "out", "channels"),
        Projection("mlp.dense_4h_to_h", "in", "channels"),
    ),
    config_keys=ConfigKeys(num_kv_heads=None, head_dim=None),
    hidden_divisible_by_heads=False,
    notes="head_dim = hidden_size // heads in the config: pruned heads need the override",
)
