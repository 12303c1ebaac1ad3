"""Falcon: fused `query_key_value` in three layouts chosen by the config.

- `new_decoder_architecture` (Falcon-40B/180B, GQA): per KV group [q_per_kv query heads, k, v] x head_dim;
- `multi_query` (Falcon-7B): [all query heads | k | v], one KV head shared by every query head;
- neither (multi-head): per head [q, k, v] x head_dim.
"""

from dataclasses import replace

from .base import ArchitectureSpec, ConfigKeys, Projection

_QKV = ("q_heads", "kv_heads", "kv_heads")

FALCON_GROUPED = ArchitectureSpec(
    name="Falcon",
    model_types=("falcon",),
    layers="transformer.h",
    attention=(
        Projection("self_attention.query_key_value", "out", _QKV, layout="per_group"),
        Projection("self_attention.dense", "in", "q_heads"),
    ),
    mlp=(
        Projection("mlp.dense_h_to_4h", "out", "channels"),
        Projection("mlp.dense_4h_to_h", "in", "channels"),
    ),
    config_keys=ConfigKeys(num_kv_heads="num_kv_heads", head_dim=None, intermediate_size="ffn_hidden_size"),
    hidden_divisible_by_heads=False,
    module_attributes=(
        ("self_attention", "num_heads", "num_heads"),
        ("self_attention", "num_kv_heads", "num_kv_heads"),
    ),
    notes="fused QKV layout from new_decoder_architecture / multi_query; ALiBi variants (Falcon-RW) unsupported",
)

FALCON_MULTI_QUERY = replace(
    FALCON_GROUPED,
    attention=(
        Projection("self_attention.query_key_value", "out", _QKV),
        Projection("self_attention.dense", "in", "q_heads"),
    ),
    config_keys=replace(FALCON_GROUPED.config_keys, num_kv_heads=None),
    shared_kv=True,
)
FALCON_MULTI_HEAD = replace(FALCON_GROUPED, config_keys=replace(FALCON_GROUPED.config_keys, num_kv_heads=None))


def _falcon_variant(config) -> ArchitectureSpec:
    if getattr(config, "alibi", False):
        raise ValueError(
            "Falcon checkpoints with alibi=True (Falcon-RW) are not supported: their ALiBi bias is folded into the "
            "attention mask per head count. Use a rotary Falcon (alibi=False)."
        )
    if getattr(config, "new_decoder_architecture", False):
        return FALCON_GROUPED
    return FALCON_MULTI_QUERY if getattr(config, "multi_query", False) else FALCON_MULTI_HEAD


FALCON = replace(FALCON_GROUPED, variant=_falcon_variant)
