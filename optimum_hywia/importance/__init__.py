"""Importance estimators (fine- and coarse-grained Taylor scores, baselines) and their attention fusion."""

from .activations import ActivationStatistics, activation_scores
from .estimators import GRADIENT_ESTIMATORS, gradient_scores, weight_scores
from .fusion import AttentionFusion, FusionResult, HybridFusion
from .masking import group_masks
from .statistics import GradientStatistics

__all__ = [
    "GRADIENT_ESTIMATORS",
    "ActivationStatistics",
    "AttentionFusion",
    "FusionResult",
    "GradientStatistics",
    "HybridFusion",
    "activation_scores",
    "gradient_scores",
    "group_masks",
    "weight_scores",
]
