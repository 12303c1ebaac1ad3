"""The built-in importance methods: HyWIA and the baselines it is compared with (registered in `registry`)."""

from __future__ import annotations

import time

import torch

from .activations import ActivationStatistics, activation_scores, fluctuation_scores
from .estimators import gradient_scores, l2_scores, random_scores
from .fusion import HybridFusion
from .ranking import FUSED, choose_rankings, rank_slots
from .registry import ImportanceMethod, ScoringContext, get_importance
from .slimgpt import SlimGPT
from .statistics import cached_teacher


class HyWIA(ImportanceMethod):
    description = (
        "fine-grained (element1/element2) and coarse-grained (vector) Taylor scores blended per layer and module kind "
        "by an attention module trained through soft masks; a hard-masked pass chooses the ranking inside layers, or, "
        "with compensation, a compensated choice between whole selections"
    )
    needs_calibration = needs_gradients = uses_fusion = True
    per_parameter = False  # the fused scores are trained against the per-layer budget directly

    def score(self, context: ScoringContext):
        from ..distributed import RowShardedModel, distributed_world, summed_gradients
        from ..memory import available_memory

        config = context.config
        statistics = context.gradient_statistics()
        fine = [gradient_scores(name, statistics) for name in config.fine_estimators]
        coarse = gradient_scores("vector", statistics)
        start = time.perf_counter()
        fusion = HybridFusion(
            context.group_sets,
            fine,
            coarse,
            context.plan,
            context.num_layers,
            config.fusion_hidden_size,
            config.seed,
            config.fusion_alpha,
            objective=config.fusion_objective,
        )
        runner = context.calibration_runner()
        trainer = RowShardedModel(runner) if distributed_world()[1] > 1 else runner
        # fusion and ranking compare masked models with one dense teacher: its outputs in up to a quarter of free RAM
        with cached_teacher((available_memory(torch.device("cpu")) or 0) // 4):
            with summed_gradients(fusion.module):
                result = fusion.train(
                    trainer,
                    context.batches,
                    config.fusion_steps,
                    config.fusion_learning_rate,
                    config.fusion_temperature,
                    context.progress,
                )
            context.seconds["fusion"] = time.perf_counter() - start
            estimates = dict(zip((*config.fine_estimators, "vector"), (*fine, coarse)))
            ranking = config.fusion_ranking or "select"  # unresolved (scored outside HyWIAPruner.prune): choose
            if ranking == "select":
                start = time.perf_counter()
                choice = choose_rankings(
                    trainer,
                    context.batches,
                    context.group_sets,
                    context.plan,
                    result.scores,
                    estimates,
                    config.fusion_objective,
                    context.progress,
                )
                result.scores, result.ranking = choice.scores, choice.chosen
                result.ranking_losses, result.ranking_batches = choice.losses, choice.batches
                context.seconds["ranking"] = time.perf_counter() - start
            elif ranking != FUSED:
                result.ranking = {kind: ranking for kind in config.group_kinds}
                result.scores = rank_slots(context.group_sets, result.scores, estimates, result.ranking)
        for name in config.selection_candidates:  # each estimate's own selection, as its own prune would make it
            scores = estimates[name] if name in estimates else gradient_scores(name, statistics)
            result.alternatives[name] = get_importance(name).comparable(scores, context.group_sets, config.layout)
        return result.scores, result


class _GradientEstimator(ImportanceMethod):
    needs_calibration = needs_gradients = True

    def score(self, context: ScoringContext):
        return gradient_scores(self.name, context.gradient_statistics())


class Element1(_GradientEstimator):
    description = "first-order Taylor: sum over the group of abs(w · dL/dw) (LLM-Pruner's element¹)"


class Element2(_GradientEstimator):
    description = "second-order Taylor with the Fisher diagonal: sum over the group of w·F·w (LLM-Pruner's element²)"


class Vector(_GradientEstimator):
    description = "coarse-grained Taylor: sum over the group's weight vectors of abs(sum of w · dL/dw) (LLM-Pruner)"


class L2(ImportanceMethod):
    description = "L2 norm of the group's weights"

    def score(self, context: ScoringContext):
        return l2_scores(context.group_sets)


class Random(ImportanceMethod):
    description = "uniform noise (seeded): the floor every method must beat"

    def score(self, context: ScoringContext):
        return random_scores(context.group_sets, context.config.seed)


class _ActivationMethod(ImportanceMethod):
    needs_calibration = needs_activations = True

    def activations(self, context: ScoringContext) -> ActivationStatistics:
        config = context.config
        start = time.perf_counter()
        activations = ActivationStatistics(context.group_sets)  # every rank runs every batch
        activations.collect(
            context.model,
            context.batches,
            context.progress,
            config.calibration_micro_batch_size,
            config.autocast_dtype,
        )
        context.seconds["activations"] = time.perf_counter() - start
        return activations


class WandaSP(_ActivationMethod):
    description = "FLAP's Wanda-sp: abs(W) · ‖X‖ of the o_proj/down_proj input columns (forward passes only)"

    def score(self, context: ScoringContext):
        return activation_scores(self.activations(context))


class Flap(_ActivationMethod):
    description = (
        "FLAP's fluctuation metric Var(X_j) · ‖W[:, j]‖² of the o_proj/down_proj input columns, standardised per "
        "layer and kind (global allocation with `per_layer`); pair it with reconstruction='bias' as FLAP does"
    )
    per_parameter = False  # FLAP ranks the standardised scores globally against each group's parameter cost

    def score(self, context: ScoringContext):
        return fluctuation_scores(self.activations(context))


# registered by `registry` on first use, in this order (`registry.BUILT_IN`)
BUILT_IN_METHODS: dict[str, type[ImportanceMethod]] = {
    "hywia": HyWIA,
    "element1": Element1,
    "element2": Element2,
    "vector": Vector,
    "l2": L2,
    "random": Random,
    "wanda_sp": WandaSP,
    "flap": Flap,
    "slimgpt": SlimGPT,
}
