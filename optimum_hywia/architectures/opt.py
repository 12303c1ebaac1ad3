"""OPT: separate q/k/v/out projections with biases, fc1/fc2 MLP, layers under `model.decoder`."""

from .base import ArchitectureSpec, ConfigKeys, Projection, Variant

OPT = ArchitectureSpec(
    name="OPT",
    model_types=("opt",),
    layers="model.decoder.layers",
    attention=(
        Projection("self_attn.q_proj", "out", "q_heads"),
        Projection("self_attn.k_proj", "out", "kv_heads"),
        Projection("self_attn.v_proj", "out", "kv_heads"),
        Projection("self_attn.out_proj", "in", "q_heads"),
    ),
    mlp=(
        Projection("fc1", "out", "channels"),
        Projection("fc2", "in", "channels"),
    ),
    config_keys=ConfigKeys(num_kv_heads=None, head_dim=None, intermediate_size="ffn_dim"),
    hidden_divisible_by_heads=False,
    residual_attributes=("self_attn.embed_dim",),
    residual_points=(("attention", "final_layer_norm"), ("mlp", "")),
    variants=(
        Variant(
            "`do_layer_norm_before=False` (OPT-350m, post-norm): the sums inside the two LayerNorms",
            lambda config: not getattr(config, "do_layer_norm_before", True),
            dict(residual_points=(("attention", "self_attn_layer_norm"), ("mlp", "final_layer_norm"))),
        ),
    ),
    notes="head_dim = hidden_size // heads in the config: pruned heads need the override",
)
