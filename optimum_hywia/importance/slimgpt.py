"""SlimGPT (Ling et al., NeurIPS 2024): structured Optimal Brain Surgeon on the input-sliced projections.

The OBS itself is `optimum_hywia.obs`. As SlimGPT does: each pruned layer removes its own share of groups of each
kind, set by its Incremental Pruning Ratio (`incremental_ratios`: rising logarithmically with depth, averaging the
requested ratio), the cheapest by their single-removal cost `E_q = tr(W_q ([H⁻¹]_qq)⁻¹ W_qᵀ)` on the dense model's
inputs; which groups go is then decided layer by layer, on the pruned model's own inputs, by greedy OBS (`reselect`,
called by the compensation stage); the kept columns' weights are the least-squares refit with the same `λ`, which
the OBS updates equal. The allocation turns the shares into whole groups and meets the parameter budget.
"""

from __future__ import annotations

import math
import time
from statistics import fmean

import torch

from ..groups import GroupSet, Key
from ..obs import input_projection, reselect_by_obs, single_removal_costs
from .registry import ImportanceMethod, ScoringContext


class SlimGPT(ImportanceMethod):
    description = (
        "SlimGPT's structured Optimal Brain Surgeon: per-layer shares rising with depth (its Incremental Pruning "
        "Ratio), the groups chosen greedily layer by layer on the pruned model's inputs by the reconstruction error "
        "of removing each with the optimal update of the others (needs reconstruction='least_squares', its weight "
        "update)"
    )
    needs_calibration = needs_activations = True
    per_parameter = False  # the scores below place each group against its layer's share, not per parameter

    def score(self, context: ScoringContext):
        from ..compensation import collect_input_statistics, dense_weight

        if context.config.reconstruction != "least_squares":
            raise ValueError(
                "importance='slimgpt' updates the kept weights as it removes groups: use "
                "reconstruction='least_squares'."
            )
        start = time.perf_counter()
        inputs = {gs.key: input_projection(gs) for gs in context.group_sets}
        projections = [(gs.key, gs.projections[inputs[gs.key]]) for gs in context.group_sets]
        statistics = collect_input_statistics(
            context.model, context.config, projections, context.batches, context.progress
        )
        costs = {}
        for group_set in context.group_sets:
            index = inputs[group_set.key]
            weight = dense_weight(group_set.projections[index])
            gram = statistics[group_set.key].gram
            costs[group_set.key] = single_removal_costs(
                weight, gram, group_set, index, context.config.reconstruction_ridge
            )
        context.seconds["activations"] = time.perf_counter() - start
        return scheduled_scores(costs, context.group_sets, context.config.pruning_ratio)

    reselect = staticmethod(reselect_by_obs)


# SlimGPT's setting for LLaMA-7B at 20% (its README: `--non_uniform_strategy log_increase --min_sparsity 0.0625
# --max_sparsity 0.25`): the last layer's ratio is 4 times the first's; other targets keep that shape
LAST_TO_FIRST = 4.0


def incremental_ratios(num_layers: int, ratio: float) -> list[float]:
    """SlimGPT's Incremental Pruning Ratio: `r_i = r_first + (r_last − r_first) · log(1 + i) / log(num_layers)` for
    the pruned layers `i = 0 .. num_layers − 1`, with `r_last = LAST_TO_FIRST · r_first` and their mean `ratio` (for
    32 layers at 0.2: 0.0625 rising to 0.25, SlimGPT's own setting). The allocation's minimum widths cap large shares.
    """
    if num_layers == 1:
        return [ratio]
    rise = [math.log(1 + i) / math.log(num_layers) for i in range(num_layers)]
    first = ratio / (1 + (LAST_TO_FIRST - 1) * fmean(rise))
    return [first * (1 + (LAST_TO_FIRST - 1) * x) for x in rise]


def scheduled_scores(
    costs: dict[Key, torch.Tensor], group_sets: list[GroupSet], ratio: float
) -> dict[Key, torch.Tensor]:
    """Scores that make the allocation remove each layer's `incremental_ratios` share of every kind, cheapest cost
    first: a group's position in its set by cost, `(rank + 0.5) / n`, minus its layer's share. Ranked together,
    the groups below a common threshold are the schedule's (the threshold moves off 0 only as far as whole groups
    and the parameter budget need)."""
    layers = sorted({gs.layer for gs in group_sets})
    shares = dict(zip(layers, incremental_ratios(len(layers), ratio)))
    scores = {}
    for group_set in group_sets:
        n = group_set.num_groups
        rank = torch.empty(n, dtype=torch.float64)
        rank[torch.argsort(costs[group_set.key], stable=True)] = torch.arange(n, dtype=torch.float64)
        scores[group_set.key] = (rank + 0.5) / n - shares[group_set.layer]
    return scores
