"""Baichuan (Baichuan-7B rotary, Baichuan-13B ALiBi, Baichuan2): remote code, fused `W_pack` = [q; k; v] rows.

The modeling code is not in transformers: it comes with the user's checkpoint (`trust_remote_code=True`), and the
pruned checkpoint keeps that file next to the HyWIA override, which subclasses it.
"""

from .base import ArchitectureSpec, ConfigKeys, Projection

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
    module_attributes=(
        ("self_attn", "num_heads", "num_heads"),
        ("self_attn", "hidden_size", "attention_width"),
    ),
    remote_code=True,
    notes="remote code kept in the checkpoint; W_pack split at self.hidden_size (updated per layer)",
)
