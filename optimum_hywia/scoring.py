"""The score stage: prepare what the configured importance method needs, run it, and make its scores comparable."""

from __future__ import annotations

from typing import Any

import torch

from .data import prepare_calibration_data
from .groups import GroupSet
from .importance.fusion import FusionResult
from .importance.registry import Scores, ScoringContext, get_importance, importance_names


def score_groups(
    model: Any,
    spec: Any,
    config: Any,
    tokenizer: Any,
    group_sets: list[GroupSet],
    plan: Any,
    num_layers: int,
    calibration_data: Any,
    show_progress: bool,
    seconds: dict[str, float],
) -> tuple[Scores, FusionResult | None]:
    """Scores of every group set by `config.importance` (a registry entry), and HyWIA's fusion result if any."""
    method = get_importance(config.importance)
    batches = None
    if method.needs_data:
        if calibration_data is None:
            without = [name for name in importance_names() if not get_importance(name).needs_data]
            raise ValueError(
                f"importance={config.importance!r} needs calibration_data (a list of strings, a datasets.Dataset, a "
                f"text file or token ids); only {without} prune without it."
            )
        samples = prepare_calibration_data(
            calibration_data,
            tokenizer,
            num_samples=config.num_calibration_samples,
            sequence_length=config.calibration_sequence_length,
            seed=config.seed,
            vocab_size=model.get_input_embeddings().num_embeddings,
        )
        batches = list(torch.split(samples, config.calibration_batch_size))
    context = ScoringContext(model, spec, config, group_sets, plan, num_layers, batches, show_progress, seconds)
    result = method.score(context)
    scores, fusion = result if isinstance(result, tuple) else (result, None)
    missing = [gs.key for gs in group_sets if gs.key not in scores or len(scores[gs.key]) != gs.num_groups]
    if missing:
        raise ValueError(
            f"importance={config.importance!r} returned no score or a wrong number of scores for {missing[:3]}: "
            "score() must return one value per group for every group set."
        )
    if method.per_parameter and config.layout == "per_layer":  # groups of different sizes compare per parameter
        scores = {gs.key: scores[gs.key] / gs.params_per_group for gs in group_sets}
    return scores, fusion
