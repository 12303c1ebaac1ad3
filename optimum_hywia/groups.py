"""Prunable groups of a model instance, built from its family's mapping table.

A *group* is the smallest structure that can be removed: one KV-head group (a KV head with the query heads that read
it, with their q/k/v rows and o columns) or one MLP channel (its gate/up rows and down column). `GroupSet` holds the
groups of one kind in one decoder layer and knows, for each projection, which rows or columns belong to which group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .architectures import ArchitectureSpec, Projection


@dataclass
class BoundProjection:
    """A table `Projection` resolved to the module of one layer."""

    spec: Projection
    module: nn.Linear
    name: str  # full module path in the model

    @property
    def size(self) -> int:
        return self.module.out_features if self.spec.dim == "out" else self.module.in_features


@dataclass
class GroupSet:
    """The groups of one kind (`"attention"` or `"mlp"`) in one decoder layer."""

    layer: int
    kind: str
    projections: list[BoundProjection]
    unit_size: dict[str, int]  # rows/columns per unit: head_dim for heads, 1 for channels
    units_per_group: dict[str, int]  # units of each space owned by one group
    num_groups: int
    group_of_index: list[torch.Tensor] = field(default_factory=list)  # per projection: group id of each row/column

    def __post_init__(self) -> None:
        self.group_of_index = [
            torch.arange(p.size) // (self.unit_size[p.spec.units] * self.units_per_group[p.spec.units])
            for p in self.projections
        ]

    @property
    def key(self) -> tuple[int, str]:
        return self.layer, self.kind

    @property
    def params_per_group(self) -> int:
        """Parameters removed with one group (weights and the biases of sliced rows)."""
        total = 0
        for projection in self.projections:
            weight = projection.module.weight
            other = weight.shape[1] if projection.spec.dim == "out" else weight.shape[0]
            per_group = self.unit_size[projection.spec.units] * self.units_per_group[projection.spec.units]
            has_bias = projection.spec.dim == "out" and projection.module.bias is not None
            total += per_group * (other + int(has_bias))
        return total

    @property
    def num_units(self) -> dict[str, int]:
        return {space: self.num_groups * per_group for space, per_group in self.units_per_group.items()}

    def indices(self, projection_index: int, groups: torch.Tensor) -> torch.Tensor:
        """Rows (dim `"out"`) or columns (dim `"in"`) of a projection that belong to `groups`, in order."""
        keep = torch.zeros(self.num_groups, dtype=torch.bool)
        keep[groups] = True
        return torch.nonzero(keep[self.group_of_index[projection_index]]).flatten()


def decoder_layers(model: nn.Module, spec: ArchitectureSpec) -> tuple[str, nn.ModuleList]:
    """The decoder layers of `model` and their path, for a model with or without its task head."""
    path = spec.layers
    while True:
        try:
            return path, model.get_submodule(path)
        except AttributeError:
            if "." not in path:
                raise ValueError(
                    f"Could not find the decoder layers at {spec.layers!r} in {type(model).__name__}: "
                    f"is this a {spec.name} model?"
                ) from None
            path = path.split(".", 1)[1]


def head_dim(config, spec: ArchitectureSpec) -> int:
    keys = spec.config_keys
    value = getattr(config, keys.head_dim, None) if keys.head_dim else None
    return value or getattr(config, keys.hidden_size) // getattr(config, keys.num_heads)


def build_group_sets(model: nn.Module, spec: ArchitectureSpec, layers: range, kinds: tuple[str, ...]) -> list[GroupSet]:
    """One `GroupSet` per (layer, kind); widths are read from the modules, so pruned models work too."""
    path, layer_modules = decoder_layers(model, spec)
    dim = head_dim(model.config, spec)
    sets = []
    for layer in layers:
        for kind in kinds:
            projections = [
                BoundProjection(p, layer_modules[layer].get_submodule(p.path), f"{path}.{layer}.{p.path}")
                for p in spec.projections(kind)
            ]
            unit_size = {"q_heads": dim, "kv_heads": dim, "channels": 1}
            counts: dict[str, int] = {}
            for projection in projections:
                if not isinstance(projection.module, nn.Linear):
                    raise TypeError(
                        f"{projection.name} is a {type(projection.module).__name__}, expected nn.Linear: "
                        "quantized or custom layers cannot be pruned; load the model in float precision."
                    )
                units, remainder = divmod(projection.size, unit_size[projection.spec.units])
                if remainder or counts.setdefault(projection.spec.units, units) != units:
                    raise ValueError(f"{projection.name} has {projection.size} features, inconsistent with {counts}.")
            if kind == "attention":
                num_groups = counts.get("kv_heads", counts["q_heads"])
                per_group = {"q_heads": counts["q_heads"] // num_groups, "kv_heads": 1}
                if counts["q_heads"] % num_groups:
                    raise ValueError(f"Layer {layer}: {counts['q_heads']} query heads for {num_groups} KV heads.")
            else:
                num_groups, per_group = counts["channels"], {"channels": 1}
            per_group = {space: n for space, n in per_group.items() if space in counts}
            sets.append(GroupSet(layer, kind, projections, unit_size, per_group, num_groups))
    return sets
