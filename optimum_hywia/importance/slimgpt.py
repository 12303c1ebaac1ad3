"""SlimGPT (Ling et al., NeurIPS 2024): structured Optimal Brain Surgeon on the input-sliced projections.

For a projection `W` (`[out, in]`) whose input columns a group owns (`o_proj` columns of a KV-head group, a
`down_proj` column of an MLP channel) and the Hessian of its layer-wise reconstruction loss `H = XᵀX + λI`, removing
the columns `q` of one group and updating the others optimally costs

    E_q = tr(W[:, q] ([H⁻¹]_qq)⁻¹ W[:, q]ᵀ)

and the update is `W ← W − W[:, q] ([H⁻¹]_qq)⁻¹ H⁻¹[q, :]`, after which `H⁻¹` loses `q` by a Schur complement. Groups
are removed greedily, the cheapest first, re-evaluating every cost after each removal. The kept columns end where a
least-squares refit on the kept columns puts them (the OBS updates compose to it), so the weight update is
`reconstruction="least_squares"` with the same `λ`.

In this package: the number of groups each layer keeps comes from the pipeline's allocation, fed by each group's
single-removal cost `E_q` on the dense model's inputs (per parameter, ranked globally with `per_layer`; SlimGPT itself
uses a fixed schedule of per-layer ratios rising with depth); which groups go is then decided layer by layer, on the
pruned model's own inputs, by the greedy OBS above (`reselect`, called by the compensation stage).
"""

from __future__ import annotations

import time

import torch

from ..groups import GroupSet
from .registry import ImportanceMethod, ScoringContext


def _damped_inverse(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    hessian = gram.clone()
    hessian.diagonal().add_(ridge * hessian.diagonal().mean().clamp_min(1e-12))
    factor, info = torch.linalg.cholesky_ex(hessian)
    if int(info):
        return torch.linalg.pinv(hessian, hermitian=True)
    return torch.cholesky_inverse(factor)


def _columns(group_set: GroupSet, index: int) -> list[torch.Tensor]:
    owner = group_set.group_of_index[index]
    return [torch.nonzero(owner == group).flatten() for group in range(group_set.num_groups)]


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
    inverse = _damped_inverse(gram.double(), ridge)
    alive = torch.ones(group_set.num_groups, dtype=torch.bool)
    return _costs(weight.double().to(inverse.device), inverse, _columns(group_set, index), alive).cpu()


def greedy_obs(
    weight: torch.Tensor, gram: torch.Tensor, columns: list[torch.Tensor], keep: int, ridge: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SlimGPT's greedy structured OBS: the `keep` groups it keeps (sorted indices; `columns[g]` are group `g`'s
    input columns) and the updated `[out, in]` weight (float64; removed columns zero)."""
    inverse = _damped_inverse(gram.double(), ridge)
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


def _input_projection(group_set: GroupSet) -> int:
    inputs = [i for i, p in enumerate(group_set.projections) if p.spec.dim == "in"]
    if len(inputs) != 1:
        raise ValueError(
            f"slimgpt needs exactly one projection sliced along its input in layer {group_set.layer} "
            f"({group_set.kind}), found {len(inputs)}."
        )
    return inputs[0]


class SlimGPT(ImportanceMethod):
    description = (
        "SlimGPT's structured Optimal Brain Surgeon: the reconstruction error of removing each group with the optimal "
        "update of the others; groups are chosen greedily layer by layer on the pruned model's inputs "
        "(needs reconstruction='least_squares', its weight update)"
    )
    needs_calibration = needs_activations = True

    def score(self, context: ScoringContext):
        from ..compensation import collect_input_statistics, dense_weight

        if context.config.reconstruction != "least_squares":
            raise ValueError(
                "importance='slimgpt' updates the kept weights as it removes groups: use "
                "reconstruction='least_squares'."
            )
        start = time.perf_counter()
        inputs = {gs.key: _input_projection(gs) for gs in context.group_sets}
        projections = [(gs.key, gs.projections[inputs[gs.key]]) for gs in context.group_sets]
        statistics = collect_input_statistics(
            context.model, context.config, projections, context.batches, context.progress
        )
        scores = {}
        for group_set in context.group_sets:
            index = inputs[group_set.key]
            weight = dense_weight(group_set.projections[index])
            gram = statistics[group_set.key].gram
            scores[group_set.key] = single_removal_costs(
                weight, gram, group_set, index, context.config.reconstruction_ridge
            )
        context.seconds["activations"] = time.perf_counter() - start
        return scores

    @staticmethod
    def reselect(group_set: GroupSet, weights: dict, statistics: dict, keep: int, ridge: float) -> torch.Tensor:
        """The kept groups of one set, by greedy OBS on the statistics of the pruned model's inputs."""
        index = _input_projection(group_set)
        return greedy_obs(weights[index][0], statistics[index].gram, _columns(group_set, index), keep, ridge)[0]
