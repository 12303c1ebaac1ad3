"""BERT (encoder-only): attention heads (query/key/value rows, output.dense columns) and intermediate channels."""

from .base import ArchitectureSpec, ConfigKeys, Projection

BERT = ArchitectureSpec(
    name="BERT",
    model_types=("bert",),
    layers="bert.encoder.layer",
    attention=(
        Projection("attention.self.query", "out", "q_heads"),
        Projection("attention.self.key", "out", "kv_heads"),
        Projection("attention.self.value", "out", "kv_heads"),
        Projection("attention.output.dense", "in", "q_heads"),
    ),
    mlp=(
        Projection("intermediate.dense", "out", "channels"),
        Projection("output.dense", "in", "channels"),
    ),
    config_keys=ConfigKeys(num_kv_heads=None, head_dim=None),
    hidden_divisible_by_heads=False,
    attention_width_attributes=("attention.self.all_head_size",),
    auto_class="AutoModel",
    # post-norm: the sums inside the LayerNorms are linear in the projections
    residual_points=(("attention", "attention.output.LayerNorm"), ("mlp", "output.LayerNorm")),
    notes="encoder: calibrated with a masked self-distillation loss; head size = hidden // heads in the config",
)
