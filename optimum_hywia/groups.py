"""Prunable groups of a model instance, built from its family's mapping table.

A *group* is the smallest structure that can be removed: one KV-head group (a KV head with the query heads that read
it, with their q/k/v rows and o columns) or one MLP channel (its gate/up rows and down column). Under multi-query
attention a group is one query head, and the single KV head is shared. `GroupSet` holds the groups of one kind in one
decoder layer and knows, for each projection, which rows or columns belong to which group, including inside fused
matrices (`[q | k | v]`, per-group interleaving) and transposed `Conv1D` weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .architectures import ArchitectureSpec, Projection

Key = tuple[int, str]  # a group set: (decoder layer, "attention" | "mlp")

PrunableModule = nn.Linear | Conv1D


@dataclass
class BoundProjection:
    """A table `Projection` resolved to the module of one layer."""

    spec: Projection
    module: nn.Module
    name: str  # full module path in the model

    @property
    def transposed(self) -> bool:
        """`Conv1D` stores its weight as `[in, out]`."""
        return isinstance(self.module, Conv1D)

    @property
    def weight_axis(self) -> int:
        """The axis of `module.weight` that the group slices."""
        return int((self.spec.dim == "out") == self.transposed)

    @property
    def size(self) -> int:
        return self.module.weight.shape[self.weight_axis]

    @property
    def other_size(self) -> int:
        return self.module.weight.shape[1 - self.weight_axis]

    @property
    def sliced_bias(self) -> bool:
        return self.spec.dim == "out" and getattr(self.module, "bias", None) is not None


@dataclass
class GroupSet:
    """The groups of one kind (`"attention"` or `"mlp"`) in one decoder layer.

    `group_of_index[i]` maps each row/column of projection `i` to its group; rows shared by every group (the KV head
    of multi-query attention) map to `num_groups`, one past the last group, and are never removed.
    """

    layer: int
    kind: str
    projections: list[BoundProjection]
    unit_size: dict[str, int]  # rows/columns per unit: head_dim for heads, 1 for channels
    units_per_group: dict[str, int]  # units of each space owned by one group (0: shared by all groups)
    num_groups: int
    unit_counts: dict[str, int] = field(default_factory=dict)  # units of each space in the layer
    group_of_index: list[torch.Tensor] = field(default_factory=list)  # per projection: group id of each row/column

    def __post_init__(self) -> None:
        if not self.unit_counts:
            self.unit_counts = {s: self.num_groups * n for s, n in self.units_per_group.items()}
        self.group_of_index = [self._group_of_index(p) for p in self.projections]

    def _group_of_index(self, projection: BoundProjection) -> torch.Tensor:
        segments = projection.spec.segments
        shared = any(self.units_per_group[s] == 0 for s in segments)
        if projection.spec.layout == "per_group" and not shared:
            block = sum(self.unit_size[s] * self.units_per_group[s] for s in segments)
            return torch.arange(projection.size) // block
        # concatenated segments; a per-group layout with a shared (single) KV head is the same as concatenation
        parts = []
        for space in segments:
            width = self.unit_counts[space] * self.unit_size[space]
            per_group = self.unit_size[space] * self.units_per_group[space]
            if per_group == 0:
                parts.append(torch.full((width,), self.num_groups))
            else:
                parts.append(torch.arange(width) // per_group)
        return torch.cat(parts)

    @property
    def key(self) -> tuple[int, str]:
        return self.layer, self.kind

    def rows_per_group(self, projection: BoundProjection) -> int:
        return sum(self.unit_size[s] * self.units_per_group[s] for s in projection.spec.segments)

    @property
    def params_per_group(self) -> int:
        """Parameters removed with one group (weights and the biases of sliced rows)."""
        return sum(self.rows_per_group(p) * (p.other_size + int(p.sliced_bias)) for p in self.projections)

    @property
    def num_units(self) -> dict[str, int]:
        return dict(self.unit_counts)

    def indices(self, projection_index: int, groups: torch.Tensor) -> torch.Tensor:
        """Rows (dim `"out"`) or columns (dim `"in"`) of a projection that belong to `groups` or are shared."""
        keep = torch.zeros(self.num_groups + 1, dtype=torch.bool)
        keep[groups] = True
        keep[self.num_groups] = True
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
    """Features per head, from the (text) config."""
    config = spec.widths_config(config)
    keys = spec.config_keys
    value = getattr(config, keys.head_dim, None) if keys.head_dim else None
    return value or getattr(config, keys.hidden_size) // getattr(config, keys.num_heads)


def _solve_unit_counts(projections: list[BoundProjection], unit_size: dict[str, int]) -> dict[str, int]:
    """Units of each space, from the projection sizes (a fused matrix adds its segments' widths)."""
    counts: dict[str, int] = {}
    pending = list(projections)
    while pending:
        for projection in pending:
            unknown = {s for s in projection.spec.segments if s not in counts}
            if len(unknown) <= 1:
                break
        else:
            raise ValueError(f"Cannot tell the unit counts of {[p.name for p in pending]} apart from their sizes.")
        pending.remove(projection)
        segments = projection.spec.segments
        known = sum(counts[s] * unit_size[s] for s in segments if s in counts)
        if unknown:
            (space,) = unknown
            multiplicity = segments.count(space) * unit_size[space]
            units, remainder = divmod(projection.size - known, multiplicity)
            if remainder or units <= 0:
                raise ValueError(
                    f"{projection.name} has {projection.size} features, which is not a whole number of "
                    f"{space} units of {unit_size[space]} (known: {counts})."
                )
            counts[space] = units
        elif known != projection.size:
            raise ValueError(f"{projection.name} has {projection.size} features, inconsistent with {counts}.")
    return counts


def _bind(layer_module: nn.Module, projection: Projection, prefix: str) -> BoundProjection:
    module = layer_module.get_submodule(projection.path)
    if not isinstance(module, PrunableModule):
        raise TypeError(
            f"{prefix}.{projection.path} is a {type(module).__name__}, expected nn.Linear or Conv1D: quantized or "
            "custom layers cannot be pruned; load the model in float precision."
        )
    return BoundProjection(projection, module, f"{prefix}.{projection.path}")


def build_group_sets(model: nn.Module, spec: ArchitectureSpec, layers: range, kinds: tuple[str, ...]) -> list[GroupSet]:
    """One `GroupSet` per (layer, kind); widths are read from the modules, so pruned models work too."""
    path, layer_modules = decoder_layers(model, spec)
    dim = head_dim(model.config, spec)
    unit_size = {"q_heads": dim, "kv_heads": dim, "channels": 1}
    sets = []
    for layer in layers:
        for kind in kinds:
            projections = [_bind(layer_modules[layer], p, f"{path}.{layer}") for p in spec.projections(kind)]
            counts = _solve_unit_counts(projections, unit_size)
            if kind == "attention":
                q_heads = counts["q_heads"]
                kv_heads = counts.get("kv_heads", q_heads)
                if spec.shared_kv:
                    if kv_heads != 1:
                        raise ValueError(f"Layer {layer}: multi-query table, but {kv_heads} KV heads were found.")
                    num_groups, per_group = q_heads, {"q_heads": 1, "kv_heads": 0}
                else:
                    if q_heads % kv_heads:
                        raise ValueError(f"Layer {layer}: {q_heads} query heads for {kv_heads} KV heads.")
                    num_groups, per_group = kv_heads, {"q_heads": q_heads // kv_heads, "kv_heads": 1}
            else:
                num_groups, per_group = counts["channels"], {"channels": 1}
            per_group = {space: n for space, n in per_group.items() if space in counts}
            sets.append(GroupSet(layer, kind, projections, unit_size, per_group, num_groups, counts))
    return sets
