"""BLOOM: fused `query_key_value` interleaved per head as [n_head, 3, head_dim], ALiBi position bias.

The ALiBi slope of a head depends on the head count and on the head's index, and the MLP width is hard-coded to
`4 * hidden_size` in transformers: a pruned BLOOM is never a vanilla `BloomConfig`. The modeling override keeps every
kept head's original slope (`hywia_alibi_heads`) and the per-layer widths.
"""

from .base import Alibi, ArchitectureSpec, ConfigKeys, Projection

BLOOM = ArchitectureSpec(
    name="BLOOM",
    model_types=("bloom",),
    layers="transformer.h",
    attention=(
        Projection("self_attention.query_key_value", "out", ("q_heads", "kv_heads", "kv_heads"), layout="per_group"),
        Projection("self_attention.dense", "in", "q_heads"),
    ),
    mlp=(
        Projection("mlp.dense_h_to_4h", "out", "channels"),
        Projection("mlp.dense_4h_to_h", "in", "channels"),
    ),
    config_keys=ConfigKeys(
        num_layers="n_layer", num_heads="n_head", num_kv_heads=None, head_dim=None, intermediate_size=None
    ),
    hidden_divisible_by_heads=False,
    vanilla_loadable=False,
    residual_points=(("attention", "post_attention_layernorm"), ("mlp", "")),
    # hidden_size: the width of `dense`'s input in the `slow_but_exact` path
    attention_width_attributes=("self_attention.hidden_size", "self_attention.split_size"),
    alibi=Alibi("self_attention", (("alibi", "batch_heads"),)),
    notes="ALiBi slopes kept per original head; MLP width hard-coded 4*hidden: always the override",
)
