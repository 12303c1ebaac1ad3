"""Baichuan (Baichuan-7B / Baichuan2-7B rotary, Baichuan-13B / Baichuan2-13B ALiBi): remote code, fused `W_pack`.

The modeling code is not in transformers: it comes with the user's checkpoint (`trust_remote_code=True`), and the
pruned checkpoint keeps that file next to the HyWIA override, which subclasses it.

`W_pack` = [q; k; v] rows in every variant. The 13B checkpoints replace rotary positions with ALiBi: their
`BaichuanModel` builds `_gen_alibi_mask(config.num_attention_heads, config.model_max_length)` (slopes from
`_get_interleave(n_head)`, as in the ALiBi paper and BLOOM) and passes it to every attention as `attention_mask`,
`[heads, query, key]` or, with a padding mask, `[batch, heads, query, key]`. Their configs have `model_max_length`
and no `max_position_embeddings` (the rotary 7B configs have `max_position_embeddings`): that key picks the variant.
"""

from .base import Alibi, ArchitectureSpec, ConfigKeys, Projection, Variant

BAICHUAN_ALIBI = Alibi("self_attn", (("attention_mask", "heads"),))

BAICHUAN = ArchitectureSpec(
    name="Baichuan",
    model_types=("baichuan",),
    layers="model.layers",
    attention=(
        Projection("self_attn.W_pack", "out", ("q_heads", "kv_heads", "kv_heads")),
        Projection("self_attn.o_proj", "in", "q_heads"),
    ),
    mlp=(
        Projection("mlp.gate_proj", "out", "channels"),
        Projection("mlp.up_proj", "out", "channels"),
        Projection("mlp.down_proj", "in", "channels"),
    ),
    config_keys=ConfigKeys(num_kv_heads=None, head_dim=None),
    hidden_divisible_by_heads=False,
    attention_width_attributes=("self_attn.hidden_size",),  # W_pack is split at self.hidden_size
    remote_code=True,
    residual_points=(("attention", "post_attention_layernorm"), ("mlp", "")),
    variants=(
        Variant(
            "no `max_position_embeddings` in the config (Baichuan-13B, Baichuan2-13B): ALiBi bias in `attention_mask`",
            lambda config: not hasattr(config, "max_position_embeddings"),
            dict(alibi=BAICHUAN_ALIBI),
        ),
    ),
    notes="remote code kept in the checkpoint; W_pack split at self.hidden_size (updated per layer); ALiBi (13B): "
    "slopes kept per original head",
)
