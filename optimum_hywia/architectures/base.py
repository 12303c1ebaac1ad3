"""The declarative mapping table that tells the shared engine where a family's prunable groups live."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

UnitSpace = Literal["q_heads", "kv_heads", "channels"]


@dataclass(frozen=True)
class Projection:
    """One weight matrix touched by a group kind.

    Args:
        path: module path relative to a decoder layer, e.g. `"self_attn.q_proj"`.
        dim: `"out"` when the group owns output rows (q/k/v, gate/up), `"in"` when it owns input columns (o, down).
        units: which units the sliced dimension is made of; a unit covers `head_dim` rows/columns for heads, one for
            MLP channels.
    """

    path: str
    dim: Literal["out", "in"]
    units: UnitSpace


@dataclass(frozen=True)
class ConfigKeys:
    """Names of the config attributes the surgery reads and rewrites."""

    num_layers: str = "num_hidden_layers"
    hidden_size: str = "hidden_size"
    num_heads: str = "num_attention_heads"
    num_kv_heads: str | None = "num_key_value_heads"
    head_dim: str | None = "head_dim"
    intermediate_size: str = "intermediate_size"


@dataclass(frozen=True)
class ArchitectureSpec:
    """Mapping table of one model family.

    Args:
        name: family name used in docs and errors.
        model_types: `config.model_type` values the table applies to.
        layers: path from the model to the list of decoder layers.
        attention: projections of one attention (KV-head) group.
        mlp: projections of one MLP channel.
        config_keys: config attributes holding the widths.
        hidden_divisible_by_heads: the vanilla config rejects a `hidden_size` that is not a multiple of the head
            count, so uniform checkpoints must choose head counts that divide it.
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    attention: tuple[Projection, ...]
    mlp: tuple[Projection, ...]
    config_keys: ConfigKeys = field(default_factory=ConfigKeys)
    hidden_divisible_by_heads: bool = True

    def projections(self, kind: str) -> tuple[Projection, ...]:
        return {"attention": self.attention, "mlp": self.mlp}[kind]
