"""Falcon: fused `query_key_value` in three layouts chosen by the config, rotary or ALiBi positions.

- `new_decoder_architecture` (Falcon-40B/180B, GQA): per KV group [q_per_kv query heads, k, v] x head_dim;
- `multi_query` (Falcon-7B): [all query heads | k | v], one KV head shared by every query head;
- neither (multi-head, Falcon-RW): per head [q, k, v] x head_dim.

`alibi=True` (Falcon-RW-1B/7B): the model builds the ALiBi bias for `config.num_attention_heads` heads and passes it
to every attention twice, as `alibi` ([batch * heads, 1, key]) and folded into the 4-d `attention_mask`
([batch, heads, query, key]); a pruned attention receives the slices of its kept heads (original slopes).
"""

from dataclasses import replace

from .base import Alibi, ArchitectureSpec, ConfigKeys, Projection, Variant

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
    residual_points=(("attention", ""), ("mlp", "")),  # parallel attention and MLP (the sequential variant below)
    residual_attributes=("self_attention.hidden_size",),
    attention_width_attributes=("self_attention.split_size",),
    notes="fused QKV layout from new_decoder_architecture / multi_query; ALiBi (Falcon-RW): slopes kept per "
    "original head",
)

FALCON_ALIBI = Alibi("self_attention", (("alibi", "batch_heads"), ("attention_mask", "heads")))

FALCON = replace(
    FALCON_GROUPED,
    variants=(
        Variant(
            "`multi_query=True`, `new_decoder_architecture=False` (Falcon-7B): one KV head shared by every query head",
            lambda config: (
                getattr(config, "multi_query", False) and not getattr(config, "new_decoder_architecture", False)
            ),
            dict(
                attention=(
                    Projection("self_attention.query_key_value", "out", _QKV),
                    Projection("self_attention.dense", "in", "q_heads"),
                ),
                config_keys=replace(FALCON_GROUPED.config_keys, num_kv_heads=None),
                shared_kv=True,
            ),
        ),
        Variant(
            "`parallel_attn=False`, `new_decoder_architecture=False` (Falcon-RW): attention, then the MLP",
            lambda config: (
                not (getattr(config, "parallel_attn", True) or getattr(config, "new_decoder_architecture", False))
            ),
            dict(residual_points=(("attention", "post_attention_layernorm"), ("mlp", ""))),
        ),
        Variant(
            "`alibi=True` (Falcon-RW): ALiBi bias in `alibi` and in the 4-d `attention_mask`",
            lambda config: bool(getattr(config, "alibi", False)),
            dict(alibi=FALCON_ALIBI),
        ),
    ),
)
