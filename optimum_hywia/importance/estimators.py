"""Single-granularity importance estimators (LLM-Pruner's baselines), per group.

With `s = w * dL/dw` summed over the calibration batches and `F` the Fisher diagonal:

- `element1` (fine, first order): sum over the group of |s_i|
- `element2` (fine, second order): sum over the group of w_i F_i w_i
- `vector` (coarse): sum over the group's weight vectors (rows or columns) of |sum of s over the vector|
- `l2`: the L2 norm of the group's weights
- `random`: uniform noise (seeded)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..groups import GroupSet
from ..offload import module_tensor
from .statistics import GradientStatistics


def group_sum(group_set: GroupSet, per_projection: list[torch.Tensor]) -> torch.Tensor:
    """Add per-row/column values of every projection into one value per group."""
    total = torch.zeros(group_set.num_groups + 1, dtype=torch.float64)  # last bin: rows shared by every group
    for group_of_index, values in zip(group_set.group_of_index, per_projection):
        total.index_add_(0, group_of_index, values.to(torch.float64))
    return total[:-1]


def _per_index(statistics: GradientStatistics, values: Callable) -> dict[tuple[int, str], torch.Tensor]:
    if statistics.num_batches == 0:
        raise ValueError("No calibration batch was run: gradient estimators need calibration data.")
    return {
        gs.key: group_sum(gs, [values(s, statistics) for s in statistics.stats[gs.key]]) for gs in statistics.group_sets
    }


def element1_scores(statistics: GradientStatistics) -> dict[tuple[int, str], torch.Tensor]:
    return _per_index(statistics, lambda s, _: s.absolute)


def element2_scores(statistics: GradientStatistics) -> dict[tuple[int, str], torch.Tensor]:
    return _per_index(statistics, lambda s, st: s.squared / st.num_batches)


def vector_scores(statistics: GradientStatistics) -> dict[tuple[int, str], torch.Tensor]:
    return _per_index(statistics, lambda s, _: s.signed.abs())


GRADIENT_ESTIMATORS: dict[str, Callable[[GradientStatistics], dict]] = {
    "element1": element1_scores,
    "element2": element2_scores,
    "vector": vector_scores,
}


def gradient_scores(method: str, statistics: GradientStatistics) -> dict[tuple[int, str], torch.Tensor]:
    """Scores of one gradient-based estimator, by name, for every group set."""
    if method not in GRADIENT_ESTIMATORS:
        raise ValueError(f"{method!r} is not a gradient estimator; choose from {tuple(GRADIENT_ESTIMATORS)}.")
    return GRADIENT_ESTIMATORS[method](statistics)


def l2_scores(group_sets: list[GroupSet]) -> dict[tuple[int, str], torch.Tensor]:
    """The L2 norm of every group's weights (and sliced bias rows)."""
    scores = {}
    for group_set in group_sets:
        values = []
        for projection in group_set.projections:
            module = projection.module
            squared = module_tensor(module, "weight").detach().float().square()
            per_index = squared.sum(1 - projection.weight_axis)  # Conv1D weights are [in, out]
            if projection.sliced_bias:
                per_index = per_index + module_tensor(module, "bias").detach().float().square()
            values.append(per_index.cpu())
        scores[group_set.key] = group_sum(group_set, values).sqrt()
    return scores


def random_scores(group_sets: list[GroupSet], seed: int = 0) -> dict[tuple[int, str], torch.Tensor]:
    """Uniform noise per group, seeded."""
    generator = torch.Generator().manual_seed(seed)
    return {gs.key: torch.rand(gs.num_groups, generator=generator, dtype=torch.float64) for gs in group_sets}
