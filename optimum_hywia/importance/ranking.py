"""Which groups a slot keeps once the fusion has decided how many: the ranking inside slots, chosen with hard masks.

The soft-mask gradient that trains the fusion is dominated by how many groups each slot keeps (raising the blend on
an estimate moves the slot's scores near the threshold, hence its budget); which groups inside the slot go is a
second-order term of it, and there the learned blend ranks worse than the single estimates it blends
(docs/method.md, section 5). So the fused scores set every slot's count, and for each group kind the ranking inside
its slots is chosen among the fused score and every single estimate by the calibration objective of the
*hard-masked* model, i.e. of the selection exactly as it will be pruned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..allocation import PruningPlan, select_groups
from ..groups import GroupSet, Key
from ..offload import execution_device
from .masking import group_masks
from .statistics import calibration_loss, check_finite

FUSED = "fused"
KIND_ORDER = ("mlp", "attention")  # the kind holding most parameters first (coordinate-wise choice)


def ranked_by(scores: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """The values of `scores`, reassigned to the groups in the order of `ranking` (its best group gets the highest).

    A slot keeps the same values, hence the same kept count under both layouts' allocation, which compares values
    only; `ranking` decides which of its groups are kept.
    """
    reordered = torch.empty_like(scores)
    reordered[ranking.argsort(descending=True, stable=True)] = scores.sort(descending=True).values
    return reordered


@dataclass
class RankingChoice:
    """The scores to prune by, the ranking chosen per group kind, and the hard-mask loss of every candidate."""

    scores: dict[Key, torch.Tensor]
    chosen: dict[str, str]
    losses: dict[str, dict[str, float]]


def rank_slots(
    group_sets: list[GroupSet],
    fused: dict[Key, torch.Tensor],
    estimates: dict[str, dict[Key, torch.Tensor]],
    chosen: dict[str, str],
) -> dict[Key, torch.Tensor]:
    """`fused` scores with each slot's groups ranked by the estimate `chosen` for its kind (`"fused"`: as they are)."""
    scores = {}
    for group_set in group_sets:
        name = chosen.get(group_set.kind, FUSED)
        value = fused[group_set.key]
        scores[group_set.key] = value if name == FUSED else ranked_by(value, estimates[name][group_set.key])
    return scores


@torch.no_grad()
def choose_rankings(
    model: torch.nn.Module,
    batches: Sequence[torch.Tensor],
    group_sets: list[GroupSet],
    plan: PruningPlan,
    fused: dict[Key, torch.Tensor],
    estimates: dict[str, dict[Key, torch.Tensor]],
    objective: str = "distillation",
    show_progress: bool = True,
) -> RankingChoice:
    """Per group kind (MLP first), the candidate ranking (`"fused"` or a name of `estimates`) whose hard-masked model
    has the lowest calibration objective over `batches`, the other kinds at their choice so far. Ties keep the fused
    ranking; candidates that select the same groups are evaluated once."""
    kinds = [kind for kind in KIND_ORDER if any(gs.kind == kind for gs in group_sets)]
    candidates = [FUSED, *estimates]
    chosen = {kind: FUSED for kind in kinds}
    losses: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
    evaluated: dict[tuple, float] = {}
    device = execution_device(model)
    was_training = model.training
    model.eval()
    progress = tqdm(total=len(kinds) * len(candidates), desc="HyWIA ranking choice", disable=not show_progress)
    try:
        for kind in kinds:
            for name in candidates:
                kept = select_groups(rank_slots(group_sets, fused, estimates, {**chosen, kind: name}), group_sets, plan)
                selection = tuple(tuple(kept[gs.key].tolist()) for gs in group_sets)
                if selection not in evaluated:
                    masks = {}
                    for group_set in group_sets:
                        masks[group_set.key] = torch.zeros(group_set.num_groups)
                        masks[group_set.key][kept[group_set.key]] = 1.0
                    with group_masks(group_sets, masks):
                        total = sum(float(calibration_loss(model, batch.to(device), objective)) for batch in batches)
                    loss = torch.tensor(total / len(batches))
                    check_finite(loss, "hard-mask calibration loss")
                    evaluated[selection] = float(loss)
                losses[kind][name] = evaluated[selection]
                progress.update()
            chosen[kind] = min(candidates, key=lambda name: losses[kind][name])  # first (fused) on ties
    finally:
        progress.close()
        model.train(was_training)
    return RankingChoice(rank_slots(group_sets, fused, estimates, chosen), chosen, losses)
