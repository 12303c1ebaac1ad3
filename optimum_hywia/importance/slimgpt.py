"""SlimGPT (Ling et al., NeurIPS 2024): structured Optimal Brain Surgeon on the input-sliced projections.

The OBS itself is `optimum_hywia.obs`. In this package: the number of groups each layer keeps comes from the
pipeline's allocation, fed by each group's single-removal cost `E_q = tr(W_q ([H⁻¹]_qq)⁻¹ W_qᵀ)` on the dense model's
inputs (per parameter, ranked globally with `per_layer`; SlimGPT itself uses a fixed schedule of per-layer ratios
rising with depth); which groups go is then decided layer by layer, on the pruned model's own inputs, by greedy OBS
(`reselect`, called by the compensation stage); the kept columns' weights are the least-squares refit with the same
`λ`, which the OBS updates equal.
"""

from __future__ import annotations

import time

from ..obs import input_projection, reselect_by_obs, single_removal_costs
from .registry import ImportanceMethod, ScoringContext


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
        inputs = {gs.key: input_projection(gs) for gs in context.group_sets}
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

    reselect = staticmethod(reselect_by_obs)
