"""Importance estimators (fine- and coarse-grained Taylor scores, baselines) and their attention fusion."""

from .estimators import GRADIENT_ESTIMATORS, gradient_scores, weight_scores
from .fusion import AttentionFusion, FusionResult, HybridFusion
from .masking import group_masks
from .statistics import GradientStatistics

__all__ = [
    "GRADIENT_ESTIMATORS",
    "AttentionFusion",
    "FusionResult",
    "GradientStatistics",
    "HybridFusion",
    "gradient_scores",
    "group_masks",
    "weight_scores",
]
