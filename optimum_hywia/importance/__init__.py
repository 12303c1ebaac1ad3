"""The score stage's methods: the importance registry, HyWIA and its baselines, and what they are computed from.

Imported lazily, so that listing the registered names (`importance_names`, used by the CLI's `--importance`) does not
import torch.
"""

from __future__ import annotations

from ..lazy import lazy_getattr
from . import registry
from .registry import (
    ENTRY_POINT_GROUP,
    ImportanceMethod,
    ScoringContext,
    get_importance,
    importance_markdown,
    importance_names,
    register_importance,
)

_EXPORTS = {
    "ActivationStatistics": "activations",
    "activation_scores": "activations",
    "GRADIENT_ESTIMATORS": "estimators",
    "gradient_scores": "estimators",
    "l2_scores": "estimators",
    "random_scores": "estimators",
    "AttentionFusion": "fusion",
    "FusionResult": "fusion",
    "HybridFusion": "fusion",
    "group_masks": "masking",
    "GradientStatistics": "statistics",
}


__getattr__ = lazy_getattr(__name__, _EXPORTS)


__all__ = [
    "ENTRY_POINT_GROUP",
    "ImportanceMethod",
    "ScoringContext",
    "get_importance",
    "importance_markdown",
    "importance_names",
    "register_importance",
    "registry",
    *_EXPORTS,
]
