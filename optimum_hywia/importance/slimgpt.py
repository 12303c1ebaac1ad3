"""Importances from structured Optimal Brain Surgeon on the input-sliced projections (the OBS itself is
`optimum_hywia.obs`).

`slimgpt` (Ling et al., NeurIPS 2024). In this package: the number of groups each layer keeps comes from the
pipeline's allocation, fed by each group's single-removal cost `E_q = tr(W_q ([H⁻¹]_qq)⁻¹ W_qᵀ)` on the dense model's
inputs (per parameter, ranked globally with `per_layer`; SlimGPT itself uses a fixed schedule of per-layer ratios
rising with depth); which groups go is then decided layer by layer, on the pruned model's own inputs, by greedy OBS
(`reselect`, called by the compensation stage); the kept columns' weights are the least-squares refit with the same
`λ`, which the OBS updates equal.

`fisher_obs`: the loss increase of each removal *after* compensation, so that the counts price it in. With `F` the
output Fisher of the projection (from the gradient pass) and `H` the Gram matrix of its dense inputs, OBS on `Lᵀ W`
(`F = L Lᵀ`, damped as `reconstruction_reselect_damping` says) costs a removal `tr(ΔW H ΔWᵀ F)`: the second-order
(Kronecker-factored Fisher) increase of the calibration loss, in the same units in every layer and kind. A group's
score is its marginal cost along the greedy OBS path that removes every group of its projection
(`obs.removal_path_scores`), so the allocation's global threshold takes from each projection what the next removal
there costs the loss, with the others refit.
"""

from __future__ import annotations

import time

from ..obs import (
    group_columns,
    input_projection,
    metric_root,
    output_metric,
    removal_path_scores,
    reselect_by_obs,
    single_removal_costs,
)
from .registry import ImportanceMethod, ScoringContext

DEFAULT_DAMPING = 0.01


def dense_inputs(context: ScoringContext) -> tuple[dict, dict]:
    """Each set's input-sliced projection index and the Gram statistics of its inputs over one forward pass of the
    dense model (`compensation.collect_input_statistics`)."""
    from ..compensation import collect_input_statistics

    start = time.perf_counter()
    inputs = {gs.key: input_projection(gs) for gs in context.group_sets}
    projections = [(gs.key, gs.projections[inputs[gs.key]]) for gs in context.group_sets]
    statistics = collect_input_statistics(context.model, context.config, projections, context.batches, context.progress)
    context.seconds["activations"] = time.perf_counter() - start
    return inputs, statistics


class SlimGPT(ImportanceMethod):
    description = (
        "SlimGPT's structured Optimal Brain Surgeon: the reconstruction error of removing each group with the optimal "
        "update of the others; groups are chosen greedily layer by layer on the pruned model's inputs "
        "(needs reconstruction='least_squares', its weight update)"
    )
    needs_calibration = needs_activations = True

    def score(self, context: ScoringContext):
        from ..compensation import dense_weight

        if context.config.reconstruction != "least_squares":
            raise ValueError(
                "importance='slimgpt' updates the kept weights as it removes groups: use "
                "reconstruction='least_squares'."
            )
        inputs, statistics = dense_inputs(context)
        ridge = context.config.reconstruction_ridge
        return {
            gs.key: single_removal_costs(
                dense_weight(gs.projections[inputs[gs.key]]), statistics[gs.key].gram, gs, inputs[gs.key], ridge
            )
            for gs in context.group_sets
        }

    reselect = staticmethod(reselect_by_obs)


class FisherOBS(ImportanceMethod):
    description = (
        "structured OBS in the output Fisher's metric: the second-order loss increase of removing one more group "
        "with the others refit, along the greedy removal path of each projection (gradients + dense inputs)"
    )
    needs_calibration = needs_gradients = needs_activations = needs_output_fisher = True

    def score(self, context: ScoringContext):
        from ..compensation import dense_weight

        fisher = context.output_fisher()
        inputs, statistics = dense_inputs(context)
        config = context.config
        damping = config.reconstruction_reselect_damping
        damping = DEFAULT_DAMPING if damping is None else damping
        scores = {}
        for group_set in context.group_sets:
            index = inputs[group_set.key]
            root = metric_root(output_metric(fisher[group_set.key], damping))
            weight = root @ dense_weight(group_set.projections[index]).double().to(root.device)
            columns = group_columns(group_set, index)
            gram = statistics[group_set.key].gram
            scores[group_set.key] = removal_path_scores(weight, gram, columns, config.reconstruction_ridge)
        return scores
