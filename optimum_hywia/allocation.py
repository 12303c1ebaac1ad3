"""How many groups each pruned layer keeps, and which ones.

`plan_pruning` turns the requested ratio into a budget: for the `uniform` layout, a kept width per group kind shared by
every pruned layer (head counts the vanilla config accepts when possible); for `per_layer`, a number of parameters to
remove through one global ranking. `select_groups` then picks the kept groups from importance scores.

Hardware-friendly widths: a pruned layer keeps a multiple of `round_to` MLP channels and of `head_round_to` KV-head
groups (so a multiple of `head_round_to * num_attention_heads / num_key_value_heads` query heads), or all of them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
from transformers.utils import logging

from .architectures import ArchitectureSpec
from .configuration import HyWIAConfig
from .groups import GroupSet, Key

logger = logging.get_logger(__name__)


# the achieved share of removed decoder-layer parameters may differ from pruning_ratio by at most this fraction of it
RATIO_TOLERANCE = 0.25


@dataclass
class PruningPlan:
    """The structure budget of a pruning run.

    Attributes:
        layout: `"uniform"` or `"per_layer"`.
        remove_params: parameters to remove from the pruned layers (the requested ratio of all decoder-layer ones).
        total_params: prunable parameters of all decoder layers.
        kept_groups: uniform layout: groups kept in every pruned layer, per kind.
        min_groups: per_layer layout: fewest groups a layer may keep, per kind.
        round_to: kept MLP widths are multiples of this (or the whole width).
        head_round_to: kept KV-head group counts are multiples of this (or all of the layer's groups).
    """

    layout: str
    remove_params: int
    total_params: int
    kept_groups: dict[str, int]
    min_groups: dict[str, int]
    round_to: int
    head_round_to: int = 1

    def describe(self) -> str:
        """One line for logs, e.g. `uniform, remove 1,234 of 5,678 parameters, keep attention 4, mlp 80`."""
        text = f"{self.layout}, remove {self.remove_params:,} of {self.total_params:,} decoder-layer parameters"
        if self.kept_groups:
            text += ", keep " + ", ".join(f"{kind} {count}" for kind, count in self.kept_groups.items()) + " per layer"
        if self.min_groups:
            text += ", at least " + ", ".join(f"{kind} {count}" for kind, count in self.min_groups.items())
        return text

    def step(self, kind: str) -> int:
        """Kept counts of groups of `kind` are multiples of this (or the whole width)."""
        return self.head_round_to if kind == "attention" else self.round_to


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
    min_groups = {"attention": config.head_round_to, "mlp": config.round_to}
    for group_set in group_sets:
        if group_set.kind == "mlp" and group_set.num_groups < config.round_to:
            raise ValueError(
                f"round_to={config.round_to} is larger than layer {group_set.layer}'s MLP width "
                f"{group_set.num_groups}: use a round_to <= {group_set.num_groups}."
            )
        if group_set.kind == "attention" and group_set.num_groups < config.head_round_to:
            # multi-query attention (one shared KV head) is pruned by single query heads
            counted = "query-head" if group_set.units_per_group.get("kv_heads") == 0 else "KV-head"
            raise ValueError(
                f"head_round_to={config.head_round_to} is larger than layer {group_set.layer}'s {counted} count "
                f"{group_set.num_groups}: use a head_round_to <= {group_set.num_groups}."
            )
    removable = sum((gs.num_groups - min_groups[gs.kind]) * gs.params_per_group for gs in group_sets)
    # a request within half of the smallest group of the maximum is met by the maximum (ratios are rounded numbers)
    if remove > removable + min(gs.params_per_group for gs in group_sets) / 2:
        kept_at_least = "one group of each kind"
        if config.head_round_to > 1 or config.round_to > 1:
            least = {
                "attention": f"{config.head_round_to} KV-head group(s)",
                "mlp": f"{config.round_to} MLP channel(s)",
            }
            kept_at_least = " and ".join(least[kind] for kind in dict.fromkeys(gs.kind for gs in group_sets))
        raise ValueError(
            f"pruning_ratio={config.pruning_ratio} asks to remove {remove:,} of the {total_params:,} decoder-layer "
            f"parameters, but the pruned layers can give at most {removable:,} "
            f"({removable / total_params:.1%}) while keeping {kept_at_least} per layer: lower the ratio, "
            f"widen layer_range, or add group kinds."
        )
    plan = PruningPlan(
        config.layout, remove, total_params, {}, min_groups, config.round_to, head_round_to=config.head_round_to
    )
    if config.layout == "uniform":
        _plan_uniform(plan, spec, model_config, group_sets, remove / pruned_params)
    _check_ratio_is_feasible(config, plan, group_sets)
    return plan


def planned_removal(plan: PruningPlan, group_sets: list[GroupSet]) -> int:
    """Parameters the plan will remove: exact for `uniform`; for `per_layer`, the request rounded to the smallest
    removal a layer allows (`_per_layer_step`)."""
    if plan.layout == "uniform":
        return sum((gs.num_groups - plan.kept_groups[gs.kind]) * gs.params_per_group for gs in group_sets)
    step = _per_layer_step(plan, group_sets)
    return round(plan.remove_params / step) * step


def _per_layer_step(plan: PruningPlan, group_sets: list[GroupSet]) -> int:
    """`per_layer`: the smallest removal one set allows, in parameters: one group when its kind's step is 1, else
    the groups between its width and the largest multiple of the step below it (a whole step when it divides)."""
    steps = [
        (gs.num_groups - _allowed_counts(plan.step(gs.kind), gs.num_groups)[-2]) * gs.params_per_group
        for gs in group_sets
        if gs.num_groups > plan.step(gs.kind)
    ]
    return min(steps) if steps else min(gs.params_per_group for gs in group_sets)


def feasible_removals(plan: PruningPlan, group_sets: list[GroupSet], amount: int) -> tuple[int | None, int | None]:
    """The feasible removals (in parameters) nearest to `amount`: the largest one <= it and the smallest one >= it.

    `uniform`: every pruned layer keeps the same number of KV-head groups (multiples of `head_round_to`, or all) and
    of MLP channels (multiples of `round_to`, or all). `per_layer`: multiples of the smallest removal a layer allows
    (one group with steps of 1; an approximation with coarser steps).
    """
    if plan.layout == "per_layer":
        step = _per_layer_step(plan, group_sets)
        removable = sum((gs.num_groups - plan.min_groups[gs.kind]) * gs.params_per_group for gs in group_sets)
        below = min(amount // step * step, removable // step * step)
        above = -(-amount // step) * step
        return below, (above if above <= removable else None)
    # uniform widths were checked by _plan_uniform: every set of a kind looks like the first one
    removal_options = []
    for kind in dict.fromkeys(gs.kind for gs in group_sets):
        sets = [gs for gs in group_sets if gs.kind == kind]
        width, cost = sets[0].num_groups, sets[0].params_per_group * len(sets)
        removal_options.append(sorted({(width - kept) * cost for kept in _allowed_counts(plan.step(kind), width)}))
    first, second = removal_options[0], (removal_options[1] if len(removal_options) > 1 else [0])
    below, above = None, None
    for removed_first in first:  # for each option of one kind, the nearest options of the other, by bisection
        index = bisect.bisect_right(second, amount - removed_first)
        if index:
            candidate = removed_first + second[index - 1]
            below = candidate if below is None else max(below, candidate)
        index = bisect.bisect_left(second, amount - removed_first)
        if index < len(second):
            candidate = removed_first + second[index]
            above = candidate if above is None else min(above, candidate)
    return below, above


def _check_ratio_is_feasible(config: HyWIAConfig, plan: PruningPlan, group_sets: list[GroupSet]) -> None:
    """Refuse a ratio the layout can only miss by more than `RATIO_TOLERANCE`, naming the nearest feasible ones."""
    planned = planned_removal(plan, group_sets)
    if abs(planned - plan.remove_params) <= RATIO_TOLERANCE * plan.remove_params:
        if planned != plan.remove_params and abs(planned - plan.remove_params) > 0.01 * plan.total_params:
            logger.warning(
                f"pruning_ratio={config.pruning_ratio} is met as {planned / plan.total_params:.3f}: the nearest "
                f"feasible removal with layout={config.layout!r} and group_kinds={list(config.group_kinds)}."
            )
        return
    below, above = feasible_removals(plan, group_sets, plan.remove_params)
    ratios = [amount / plan.total_params for amount in (below, above) if amount]
    nearest = " or ".join(f"{ratio:.4g}" for ratio in ratios) or "none"
    units = {"attention": "KV-head groups", "mlp": f"MLP channels (multiples of round_to={config.round_to})"}
    if config.head_round_to > 1:
        units["attention"] += f" (multiples of head_round_to={config.head_round_to})"
    granularity = " and ".join(units[kind] for kind in config.group_kinds)
    if config.layout == "uniform":
        granularity = f"every pruned layer keeps the same number of {granularity}"
    else:
        granularity = f"only whole {granularity} are removed"
    raise ValueError(
        f"pruning_ratio={config.pruning_ratio} cannot be met with layout={config.layout!r} ({granularity}; the "
        f"plan would remove {planned / plan.total_params:.4g}): use the nearest feasible pruning_ratio {nearest}, "
        + ("lower round_to / head_round_to, " if config.round_to > 1 or config.head_round_to > 1 else "")
        + ("or add group kinds." if config.layout == "per_layer" else "add group kinds, or use layout='per_layer'.")
    )


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
        step = plan.head_round_to
        allowed = _allowed_counts(step, groups)
        kept = _nearest_count(target, step, groups)
        heads_per_group = attention.units_per_group["q_heads"]
        hidden = getattr(model_config, spec.config_keys.hidden_size)

        def vanilla(n: int) -> bool:
            return not spec.hidden_divisible_by_heads or hidden % (n * heads_per_group) == 0

        valid = [n for n in allowed if vanilla(n)]
        if step > 1 and kept != groups and valid == [groups]:
            working = [h for h in range(1, groups) if any(vanilla(n) for n in range(h, groups, h))]
            raise ValueError(
                f"head_round_to={step} leaves no pruned head count that a vanilla {type(model_config).__name__} "
                f"accepts with layout='uniform' (kept query heads would be multiples of {step * heads_per_group}, "
                f"and hidden_size {hidden} must be a multiple of the query-head count): use "
                + (f"head_round_to in {working} (KV-head groups), or " if working else "")
                + "layout='per_layer'."
            )
        nearest = min(valid, key=lambda n: (abs(n - target), -n))
        # the MLP width absorbs a head count off by one step; attention alone must hit its target
        if nearest == kept or ("mlp" in by_kind and abs(nearest - kept) <= step):
            kept = nearest
        else:
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
        plan.kept_groups["mlp"] = _nearest_count(mlp.num_groups - removed_channels, plan.round_to, mlp.num_groups)


def _allowed_counts(step: int, width: int) -> list[int]:
    """Kept counts a layer may have: the multiples of `step` up to `width`, and `width` itself (nothing removed)."""
    return sorted({*range(step, width + 1, step), width})


def _nearest_count(target: float, step: int, width: int) -> int:
    """The allowed count (`_allowed_counts`) nearest to `target`; a tie goes to `step * round(target / step)`."""
    return min(_allowed_counts(step, width), key=lambda n: (abs(n - target), abs(n - step * round(target / step))))


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
    counts = _rounded_counts(group_sets, remaining, plan)
    kept = {}
    for i, group_set in enumerate(group_sets):
        keep = ~removed_mask[offsets[i] : offsets[i + 1]]
        if counts[i] != remaining[i]:  # rounded: the layer keeps its `counts[i]` best groups
            keep = torch.zeros_like(keep)
            keep[torch.topk(scores[group_set.key], counts[i]).indices] = True
        kept[group_set.key] = torch.nonzero(keep).flatten()
    return kept


def _rounded_counts(group_sets: list[GroupSet], counts: list[int], plan: PruningPlan) -> list[int]:
    """Round each set's kept count to a multiple of its kind's step (or its whole width), budget-aware.

    Each count goes to the nearer of the allowed counts just below and just above it (ties keep more); then, while
    it brings the removed parameters closer to `plan.remove_params`, the set whose switch to its other neighbour
    helps most is switched (each set at most once), so that the per-layer rounding errors do not add up.
    """
    choices, rounded = [], []
    for group_set, count in zip(group_sets, counts):
        allowed = _allowed_counts(plan.step(group_set.kind), group_set.num_groups)
        below = allowed[bisect.bisect_right(allowed, count) - 1]
        above = allowed[bisect.bisect_left(allowed, count)]
        choices.append((below, above))
        rounded.append(below if count - below < above - count else above)
    if rounded == list(counts):
        return rounded

    def error(values: list[int]) -> int:
        removed = sum((gs.num_groups - n) * gs.params_per_group for gs, n in zip(group_sets, values))
        return abs(removed - plan.remove_params)

    switchable = {i for i, (below, above) in enumerate(choices) if below != above}
    while switchable:
        best, best_error = None, error(rounded)
        for i in sorted(switchable):
            trial = rounded.copy()
            trial[i] = choices[i][0] if rounded[i] == choices[i][1] else choices[i][1]
            if error(trial) < best_error:
                best, best_error = i, error(trial)
        if best is None:
            break
        rounded[best] = choices[best][0] if rounded[best] == choices[best][1] else choices[best][1]
        switchable.discard(best)
    return rounded
