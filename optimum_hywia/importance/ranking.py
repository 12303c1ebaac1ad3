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
from ..distributed import distributed_world
from ..groups import GroupSet, Key
from ..offload import execution_device
from .masking import group_masks
from .statistics import calibration_loss, check_finite

FUSED = "fused"
RACE_MIN_BATCHES = 6  # batches every candidate sees before any is dropped
RACE_Z = 3.0  # standard errors of the paired difference to the leader that drop a candidate
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
    """The scores to prune by, the ranking chosen per group kind, the hard-mask loss of every candidate, and on how
    many calibration batches each candidate was measured (fewer than all: eliminated by the race)."""

    scores: dict[Key, torch.Tensor]
    chosen: dict[str, str]
    losses: dict[str, dict[str, float]]
    batches: dict[str, dict[str, int]]


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


def hard_masks(group_sets: list[GroupSet], kept: dict[Key, torch.Tensor]) -> dict[Key, torch.Tensor]:
    """Group masks that keep exactly the groups of `kept` (1) and remove the others (0): physical removal's output."""
    masks = {}
    for group_set in group_sets:
        masks[group_set.key] = torch.zeros(group_set.num_groups)
        masks[group_set.key][kept[group_set.key]] = 1.0
    return masks


def race_survivors(alive: list[tuple], losses: dict[tuple, list[float]], seen: int) -> list[tuple]:
    """The selections of `alive` not significantly worse than the leader on the first `seen` batches: eliminated when
    their paired mean difference to the leader exceeds `RACE_Z` standard errors (all agree on every rank)."""
    if seen < RACE_MIN_BATCHES or len(alive) < 2:
        return alive
    leader = min(alive, key=lambda selection: sum(losses[selection][:seen]))
    best = torch.tensor(losses[leader][:seen], dtype=torch.float64)
    survivors = []
    for selection in alive:
        difference = torch.tensor(losses[selection][:seen], dtype=torch.float64) - best
        if selection == leader or difference.mean() <= RACE_Z * difference.std() / seen**0.5:
            survivors.append(selection)
    if distributed_world()[1] > 1:
        payload = [survivors]
        torch.distributed.broadcast_object_list(payload, src=0)
        survivors = payload[0]
    return survivors


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
    has the lowest calibration objective over `batches`, the other kinds at their choice so far.

    The candidates race batch by batch: from `RACE_MIN_BATCHES` batches on, one whose paired mean difference to the
    leader exceeds `RACE_Z` standard errors is dropped, so only close candidates see every batch; the winner always
    does. A dropped candidate's loss is estimated as the winner's plus its paired mean difference. Ties keep the
    fused ranking; candidates that select the same groups are measured once.
    """
    kinds = [kind for kind in KIND_ORDER if any(gs.kind == kind for gs in group_sets)]
    candidates = [FUSED, *estimates]
    chosen = {kind: FUSED for kind in kinds}
    losses: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
    counts: dict[str, dict[str, int]] = {kind: {} for kind in kinds}
    measured: dict[tuple, list[float]] = {}  # selection: its loss on batches 0, 1, ...
    device = execution_device(model)
    was_training = model.training
    model.eval()
    progress = tqdm(total=len(kinds) * len(batches), desc="HyWIA ranking choice", disable=not show_progress)
    try:
        for kind in kinds:
            selections, masks = {}, {}
            for name in candidates:
                kept = select_groups(rank_slots(group_sets, fused, estimates, {**chosen, kind: name}), group_sets, plan)
                selections[name] = tuple(tuple(kept[gs.key].tolist()) for gs in group_sets)
                masks[selections[name]] = hard_masks(group_sets, kept)
            alive = list(dict.fromkeys(selections.values()))
            for index in range(len(batches)):
                for selection in alive:
                    history = measured.setdefault(selection, [])
                    while len(history) <= index:
                        with group_masks(group_sets, masks[selection]):
                            loss = calibration_loss(model, batches[len(history)].to(device), objective)
                        check_finite(loss, "hard-mask calibration loss")
                        history.append(float(loss))
                alive = race_survivors(alive, measured, index + 1)
                progress.update()
            full = [name for name in candidates if selections[name] in alive]
            chosen[kind] = min(full, key=lambda name: sum(measured[selections[name]]))  # first (fused) on ties
            winner = measured[selections[chosen[kind]]]
            for name in candidates:
                own = measured[selections[name]]
                seen = len(own)
                if seen == len(batches):
                    losses[kind][name] = sum(own) / seen
                else:  # dropped: the winner's loss plus the paired difference where both were measured
                    losses[kind][name] = sum(winner) / len(winner) + (sum(own) - sum(winner[:seen])) / seen
                counts[kind][name] = seen
    finally:
        progress.close()
        model.train(was_training)
    return RankingChoice(rank_slots(group_sets, fused, estimates, chosen), chosen, losses, counts)
