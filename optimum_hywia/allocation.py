"""How many groups each pruned layer keeps, and which ones.

`plan_pruning` turns the requested ratio into a budget: for the `uniform` layout, a kept width per group kind shared by
every pruned layer (head counts the vanilla config accepts when possible); for `per_layer`, a number of parameters to
remove through one global ranking. `select_groups` then picks the kept groups from importance scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import logging

from .architectures import ArchitectureSpec
from .configuration import HyWIAConfig
from .groups import GroupSet

logger = logging.get_logger(__name__)

Key = tuple[int, str]


@dataclass
class PruningPlan:
    """The structure budget of a pruning run.

    Attributes:
        layout: `"uniform"` or `"per_layer"`.
        remove_params: parameters to remove from the pruned layers (the requested ratio of all decoder-layer ones).
        total_params: prunable parameters of all decoder layers.
        kept_groups: uniform layout: groups kept in every pruned layer, per kind.
        min_groups: per_layer layout: fewest groups a layer may keep, per kind.
        round_to: kept MLP widths are multiples of this.
        vanilla_config: whether the result can be described by the family's vanilla config.
    """

    layout: str
    remove_params: int
    total_params: int
    kept_groups: dict[str, int]
    min_groups: dict[str, int]
    round_to: int
    vanilla_config: bool = True


def plan_pruning(
    config: HyWIAConfig,
    spec: ArchitectureSpec,
    model_config,
    group_sets: list[GroupSet],
    total_params: int,
) -> PruningPlan:
    """Translate `config.pruning_ratio` into a `PruningPlan` for the pruned `group_sets`."""
    remove = round(config.pruning_ratio * total_params)
    pruned_params = sum(gs.num_groups * gs.params_per_group for gs in group_sets)
    min_groups = {"attention": 1, "mlp": config.round_to}
    for group_set in group_sets:
        if group_set.kind == "mlp" and group_set.num_groups < config.round_to:
            raise ValueError(
                f"round_to={config.round_to} is larger than layer {group_set.layer}'s MLP width "
                f"{group_set.num_groups}: use a round_to <= {group_set.num_groups}."
            )
    removable = sum((gs.num_groups - min_groups[gs.kind]) * gs.params_per_group for gs in group_sets)
    if remove > removable:
        raise ValueError(
            f"pruning_ratio={config.pruning_ratio} asks to remove {remove:,} of the {total_params:,} decoder-layer "
            f"parameters, but the pruned layers can give at most {removable:,} "
            f"({removable / total_params:.1%}) while keeping one group of each kind per layer: lower the ratio, "
            f"widen layer_range, or add group kinds."
        )
    plan = PruningPlan(config.layout, remove, total_params, {}, min_groups, config.round_to)
    if config.layout == "uniform":
        _plan_uniform(plan, spec, model_config, group_sets, remove / pruned_params)
    return plan


def _plan_uniform(plan: PruningPlan, spec, model_config, group_sets: list[GroupSet], fraction: float) -> None:
    by_kind: dict[str, GroupSet] = {}
    for group_set in group_sets:
        first = by_kind.setdefault(group_set.kind, group_set)
        if (group_set.num_groups, group_set.params_per_group) != (first.num_groups, first.params_per_group):
            raise ValueError(
                "layout='uniform' needs the same widths in every pruned layer, but layers "
                f"{first.layer} and {group_set.layer} differ ({group_set.kind}): use layout='per_layer'."
            )
    num_layers = len({gs.layer for gs in group_sets})
    remove_per_layer = plan.remove_params / num_layers
    if "attention" in by_kind:
        attention = by_kind["attention"]
        groups = attention.num_groups
        # with the MLP pruned too, attention takes the same share as the MLP (as LLM-Pruner does); alone, all of it
        share = fraction if "mlp" in by_kind else remove_per_layer / (groups * attention.params_per_group)
        target = groups * (1 - share)
        kept = min(max(round(target), 1), groups)
        heads_per_group = attention.units_per_group["q_heads"]
        hidden = getattr(model_config, spec.config_keys.hidden_size)
        valid = [
            n for n in range(1, groups + 1) if not spec.hidden_divisible_by_heads or hidden % (n * heads_per_group) == 0
        ]
        nearest = min(valid, key=lambda n: (abs(n - target), -n))
        # the MLP width absorbs a head count off by one group; attention alone must hit its target
        if nearest == kept or ("mlp" in by_kind and abs(nearest - kept) <= 1):
            kept = nearest
        else:
            plan.vanilla_config = False
            logger.warning(
                f"{kept * heads_per_group} attention heads per layer cannot be expressed in a vanilla "
                f"{type(model_config).__name__} (hidden_size {hidden} must be a multiple of the head count; nearest "
                f"valid: {nearest * heads_per_group}). The checkpoint will ship the HyWIA modeling override and need "
                "trust_remote_code=True (or optimum_hywia.load_pruned_model)."
            )
        plan.kept_groups["attention"] = kept
        remove_per_layer -= (groups - kept) * attention.params_per_group
    if "mlp" in by_kind:
        mlp = by_kind["mlp"]
        removed_channels = max(remove_per_layer, 0) / mlp.params_per_group
        kept = mlp.num_groups - removed_channels
        kept = round(kept / plan.round_to) * plan.round_to
        plan.kept_groups["mlp"] = min(max(kept, plan.round_to), mlp.num_groups)


def select_groups(
    scores: dict[Key, torch.Tensor], group_sets: list[GroupSet], plan: PruningPlan
) -> dict[Key, torch.Tensor]:
    """Kept group indices (sorted) of every set. Per-layer scores must be comparable across sets (densities)."""
    if plan.layout == "uniform":
        kept = {}
        for group_set in group_sets:
            count = plan.kept_groups[group_set.kind]
            top = torch.topk(scores[group_set.key], count, sorted=False).indices
            kept[group_set.key] = torch.sort(top).values
        return kept
    return _select_per_layer(scores, group_sets, plan)


def _select_per_layer(scores, group_sets: list[GroupSet], plan: PruningPlan) -> dict[Key, torch.Tensor]:
    """Remove the least important groups first, across all sets, until the parameter budget is met."""
    flat_scores = torch.cat([scores[gs.key] for gs in group_sets])
    set_of = torch.cat([torch.full((gs.num_groups,), i) for i, gs in enumerate(group_sets)]).tolist()
    offsets = [0]
    for group_set in group_sets:
        offsets.append(offsets[-1] + group_set.num_groups)
    remaining = [gs.num_groups for gs in group_sets]
    removed_mask = torch.zeros(len(flat_scores), dtype=torch.bool)
    removed = 0
    for flat in torch.argsort(flat_scores, stable=True).tolist():
        index = set_of[flat]
        group_set = group_sets[index]
        cost = group_set.params_per_group
        if removed + cost / 2 > plan.remove_params:
            if cost == min(gs.params_per_group for gs in group_sets):
                break
            continue
        if remaining[index] - 1 < plan.min_groups[group_set.kind]:
            continue
        removed_mask[flat] = True
        remaining[index] -= 1
        removed += cost
    kept = {}
    for i, group_set in enumerate(group_sets):
        local_scores = scores[group_set.key]
        keep = ~removed_mask[offsets[i] : offsets[i + 1]]
        if group_set.kind == "mlp" and plan.round_to > 1:
            count = round(int(keep.sum()) / plan.round_to) * plan.round_to
            count = min(max(count, plan.round_to), group_set.num_groups)
            keep = torch.zeros_like(keep)
            keep[torch.topk(local_scores, count).indices] = True
        kept[group_set.key] = torch.nonzero(keep).flatten()
    return kept
