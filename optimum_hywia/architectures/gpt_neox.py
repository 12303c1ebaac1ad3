"""GPT-NeoX / Pythia: fused `query_key_value` interleaved per head as [n_head, 3, head_dim]."""

from .base import ArchitectureSpec, ConfigKeys, Projection, Variant

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
    # parallel attention and MLP: both add into the layer's output
    residual_points=(("attention", ""), ("mlp", "")),
    variants=(
        Variant(
            "`use_parallel_residual=False`: the MLP reads the stream after the attention's sum",
            lambda config: not getattr(config, "use_parallel_residual", True),
            dict(residual_points=(("attention", "post_attention_layernorm"), ("mlp", ""))),
        ),
    ),
    notes="head_dim = hidden_size // heads in the config: pruned heads need the override",
)
