"""The score stage: prepare what the configured importance method needs, run it, and make its scores comparable."""

from __future__ import annotations

from typing import Any

import torch

from .data import held_out_windows, prepare_calibration_data
from .groups import GroupSet
from .importance.fusion import FusionResult
from .importance.registry import Scores, ScoringContext, get_importance, importance_names

# held-out windows are this many calibration windows long: a selection fitted on short windows can lose at longer
# context, which calibration-length windows do not show (docs/method.md §7b)
HELD_OUT_LENGTH = 4


def calibration_batches(model: Any, config: Any, tokenizer: Any, calibration_data: Any) -> list[torch.Tensor] | None:
    """The calibration token batches, when the importance method or the compensation needs them (else `None`)."""
    method = get_importance(config.importance)
    needed_by = []
    if method.needs_data:
        needed_by.append(f"importance={config.importance!r}")
    if config.reconstruction != "none":
        needed_by.append(f"reconstruction={config.reconstruction!r}")
    if not needed_by:
        return None
    if calibration_data is None:
        without = [name for name in importance_names() if not get_importance(name).needs_data]
        verb = "need" if len(needed_by) > 1 else "needs"
        raise ValueError(
            f"{' and '.join(needed_by)} {verb} calibration_data (a list of strings, a datasets.Dataset, a text file "
            f"or token ids); only {without} prune without it, with reconstruction='none'."
        )
    samples = prepare_calibration_data(calibration_data, tokenizer, **_window_arguments(model, config))
    return list(torch.split(samples, config.calibration_batch_size))


def held_out_batches(model: Any, config: Any, tokenizer: Any, calibration_data: Any) -> list[torch.Tensor]:
    """Windows of the calibration data that share no token with the calibration windows, each `HELD_OUT_LENGTH`
    calibration windows long, as many tokens as calibration in all (`data.held_out_windows`), in batches of
    calibration's token count per batch; empty when the data has none to spare."""
    samples = held_out_windows(
        calibration_data, tokenizer, **_window_arguments(model, config), length_multiple=HELD_OUT_LENGTH
    )
    if not len(samples):
        return []
    return list(torch.split(samples, max(config.calibration_batch_size // HELD_OUT_LENGTH, 1)))


def _window_arguments(model: Any, config: Any) -> dict[str, Any]:
    return {
        "num_samples": config.num_calibration_samples,
        "sequence_length": config.calibration_sequence_length,
        "seed": config.seed,
        "vocab_size": model.get_input_embeddings().num_embeddings,
    }


def score_groups(
    model: Any,
    spec: Any,
    config: Any,
    group_sets: list[GroupSet],
    plan: Any,
    num_layers: int,
    batches: list[torch.Tensor] | None,
    show_progress: bool,
    seconds: dict[str, float],
) -> tuple[Scores, FusionResult | None, dict[tuple[int, str], torch.Tensor]]:
    """Scores of every group set by `config.importance` (a registry entry), HyWIA's fusion result if any, and the
    output Fisher of every set's input-sliced projection when compensation re-chooses groups in its metric
    (`HyWIAConfig.reselects_by_output_fisher`; else empty)."""
    method = get_importance(config.importance)
    context = ScoringContext(
        model,
        spec,
        config,
        group_sets,
        plan,
        num_layers,
        batches if method.needs_data else None,
        show_progress,
        seconds,
    )
    result = method.score(context)
    scores, fusion = result if isinstance(result, tuple) else (result, None)
    output_fisher = {}
    if config.reselects_by_output_fisher:
        context.batches = batches  # a weight-only importance was given none
        output_fisher = context.output_fisher()
    missing = [gs.key for gs in group_sets if gs.key not in scores or len(scores[gs.key]) != gs.num_groups]
    if missing:
        raise ValueError(
            f"importance={config.importance!r} returned no score or a wrong number of scores for {missing[:3]}: "
            "score() must return one value per group for every group set."
        )
    return method.comparable(scores, group_sets, config.layout), fusion, output_fisher
