"""Structured Optimal Brain Surgeon on a projection that a group slices along its input (SlimGPT's OBS).

For a projection `W` (`[out, in]`) whose input columns a group owns (`o_proj` columns of a KV-head group, a
`down_proj` column of an MLP channel) and the Hessian of its layer-wise reconstruction loss `H = XᵀX + λI`, removing
the columns `q` of one group and updating the others optimally costs

    E_q = tr(W[:, q] ([H⁻¹]_qq)⁻¹ W[:, q]ᵀ)

and the update is `W ← W − W[:, q] ([H⁻¹]_qq)⁻¹ H⁻¹[q, :]`, after which `H⁻¹` loses `q` by a Schur complement. Groups
are removed greedily, the cheapest first, re-evaluating every cost after each removal. The kept columns end where a
least-squares refit on the kept columns puts them (the OBS updates compose to it).

Used by `importance="slimgpt"` (its scores and its choice inside each layer) and, for every importance, by
`HyWIAConfig.reconstruction_reselect` (`reselect_by_obs`: the compensation stage re-chooses which groups of each
layer go, keeping the layer's count). There the output error can be measured in a metric `M` instead, `tr(E M Eᵀ)`:
the damped output Fisher (`output_metric`), so that a removal costs what the calibration loss cares about, not
what the layer's output changes in every direction alike.
"""

from __future__ import annotations

import torch

from .groups import GroupSet


def damped_inverse(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    """`(G + λI)⁻¹` with `λ = ridge · mean(diag G)`."""
    hessian = gram.clone()
    hessian.diagonal().add_(ridge * hessian.diagonal().mean().clamp_min(1e-12))
    factor, info = torch.linalg.cholesky_ex(hessian)
    if int(info):
        return torch.linalg.pinv(hessian, hermitian=True)
    # not torch.cholesky_inverse: on CPU it is 40× slower than solving against the identity (11 s against 0.3 s for
    # an MLP's 1536 × 1536 Gram matrix), half of a compensation pass
    return torch.cholesky_solve(torch.eye(len(factor), dtype=factor.dtype, device=factor.device), factor)


def group_columns(group_set: GroupSet, index: int) -> list[torch.Tensor]:
    """The input columns of projection `index` that each group owns."""
    owner = group_set.group_of_index[index]
    return [torch.nonzero(owner == group).flatten() for group in range(group_set.num_groups)]


def input_projection(group_set: GroupSet) -> int:
    """The index of the set's one projection sliced along its input."""
    inputs = [i for i, p in enumerate(group_set.projections) if p.spec.dim == "in"]
    if len(inputs) != 1:
        raise ValueError(
            f"structured OBS needs exactly one projection sliced along its input in layer {group_set.layer} "
            f"({group_set.kind}), found {len(inputs)}."
        )
    return inputs[0]


def _costs(weight: torch.Tensor, inverse: torch.Tensor, columns: list[torch.Tensor], alive: torch.Tensor):
    """`E_q` of every group (inf for removed ones)."""
    costs = torch.full((len(columns),), float("inf"), dtype=torch.float64)
    if all(len(c) == 1 for c in columns):  # channels: E_j = ‖W[:, j]‖² / [H⁻¹]_jj, vectorised
        flat = torch.cat(columns)
        values = weight[:, flat].square().sum(0) / inverse.diagonal()[flat].clamp_min(1e-30)
        costs[alive] = values[alive]
        return costs
    for group in torch.nonzero(alive).flatten().tolist():
        q = columns[group]
        block = weight[:, q]
        costs[group] = torch.trace(block @ torch.linalg.solve(inverse[q][:, q], block.T))
    return costs


def single_removal_costs(weight: torch.Tensor, gram: torch.Tensor, group_set: GroupSet, index: int, ridge: float):
    """`E_q` of removing each group alone (float64)."""
    inverse = damped_inverse(gram.double(), ridge)
    alive = torch.ones(group_set.num_groups, dtype=torch.bool)
    return _costs(weight.double().to(inverse.device), inverse, group_columns(group_set, index), alive).cpu()


def greedy_obs(
    weight: torch.Tensor, gram: torch.Tensor, columns: list[torch.Tensor], keep: int, ridge: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy structured OBS: the `keep` groups it keeps (sorted indices; `columns[g]` are group `g`'s input
    columns) and the updated `[out, in]` weight (float64; removed columns zero)."""
    inverse = damped_inverse(gram.double(), ridge)
    w = weight.double().to(inverse.device).clone()
    alive = torch.ones(len(columns), dtype=torch.bool)
    if all(len(c) == 1 for c in columns):
        return _greedy_obs_channels(w, inverse, torch.cat(columns).to(inverse.device), keep)
    for _ in range(len(columns) - keep):
        group = int(torch.argmin(_costs(w, inverse, columns, alive)))
        q = columns[group].to(inverse.device)
        block_inverse = torch.linalg.inv(inverse[q][:, q])
        w -= w[:, q] @ block_inverse @ inverse[q, :]
        inverse -= inverse[:, q] @ block_inverse @ inverse[q, :]
        w[:, q] = 0
        alive[group] = False
    return torch.nonzero(alive).flatten(), w


def _greedy_obs_channels(w: torch.Tensor, inverse: torch.Tensor, flat: torch.Tensor, keep: int):
    """`greedy_obs` for one column per group. As SlimGPT's dynamic group size, the cheapest eighth of the columns
    still to remove goes at each step (one at a time for the last eight), with the exact block OBS update."""
    w, inverse = w[:, flat], inverse[flat][:, flat]  # columns in group order
    alive = torch.ones(len(flat), dtype=torch.bool, device=w.device)
    remaining = len(flat) - keep
    while remaining > 0:
        costs = w.square().sum(0) / inverse.diagonal().clamp_min(1e-30)
        costs[~alive] = float("inf")
        block = torch.topk(costs, -(-remaining // 8), largest=False).indices
        block_inverse = torch.linalg.inv(inverse[block][:, block])
        w.sub_((w[:, block] @ block_inverse) @ inverse[block])
        inverse.sub_((inverse[:, block] @ block_inverse) @ inverse[block])
        w[:, block] = 0
        alive[block] = False
        remaining -= len(block)
    updated = torch.zeros_like(w)
    updated[:, flat] = w
    return torch.nonzero(alive).flatten().cpu(), updated


def obs_kept_groups(
    weight: torch.Tensor,
    statistics,
    columns: list[torch.Tensor],
    keep: int,
    ridge: float,
    drift: float = 0.0,
    metric: torch.Tensor | None = None,
) -> torch.Tensor:
    """The `keep` groups (sorted; `columns[g]` are group `g`'s input columns) that greedy OBS keeps for a projection
    with dense `weight` (`[out, in]`) and input statistics `statistics` (`compensation.InputStatistics`).

    With drift correction (`drift` = β > 0 and drift statistics) the refit's target is `X Wᵀ + β D`, not `X Wᵀ`: OBS
    then starts from the refit of *every* column toward that target, `W*`, since for any kept columns `S` the error
    to the target is `‖X_S W'ᵀ − X W*ᵀ‖²` plus a constant (the normal equations of `W*`; exact without ridge), so
    the greedy removals are judged against the target the kept weights are then fitted to.

    `metric` (`[out, out]`, positive definite) measures the output error as `tr(E M Eᵀ)` instead of `‖E‖²`. The
    refit of the kept columns does not depend on it (each output row is fitted alone on the same inputs), only
    which groups cost least: with `M = L Lᵀ`, OBS on `Lᵀ W` chooses exactly as OBS in that metric.
    """
    from .compensation import refit

    if drift > 0 and statistics.drift_cross is not None:
        everything = torch.arange(weight.shape[1])
        weight, _ = refit(weight, None, everything, statistics, "least_squares", ridge, False, drift)
    if metric is not None:
        weight = metric_root(metric.double().to(weight.device)) @ weight.double()
    return greedy_obs(weight, statistics.gram, columns, keep, ridge)[0]


def metric_root(metric: torch.Tensor) -> torch.Tensor:
    """`R` with `Rᵀ R = metric` (positive semi-definite): `Lᵀ` of its Cholesky factor, or from its eigenvectors
    where it is singular (an undamped Fisher of fewer tokens than dimensions)."""
    factor, info = torch.linalg.cholesky_ex(metric)
    if not int(info):
        return factor.T
    values, vectors = torch.linalg.eigh(metric)
    return values.clamp_min(0).sqrt()[:, None] * vectors.T


def output_metric(fisher: torch.Tensor, damping: float) -> torch.Tensor:
    """`F + δ · mean(diag F) · I` (float64): the output Fisher `F`, damped toward the plain squared error."""
    metric = fisher.double().clone()
    metric.diagonal().add_(damping * metric.diagonal().mean().clamp_min(1e-30))
    return metric


def reselect_by_obs(
    group_set: GroupSet,
    weights: dict,
    statistics: dict,
    keep: int,
    ridge: float,
    drift: float = 0.0,
    metric: torch.Tensor | None = None,
) -> torch.Tensor:
    """`obs_kept_groups` for one set, on the statistics of the pruned model's inputs (`weights` / `statistics` map
    the set's projection indices to their dense `(weight, bias)` and their input statistics; `metric`: the output
    error metric, e.g. `output_metric` of the projection's output Fisher)."""
    index = input_projection(group_set)
    columns = group_columns(group_set, index)
    return obs_kept_groups(weights[index][0], statistics[index], columns, keep, ridge, drift, metric)
