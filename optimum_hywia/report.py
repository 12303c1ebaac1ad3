"""`PruningReport`: what a pruning run did, saved as `hywia_report.json` next to the pruned model."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .groups import GroupSet, build_group_sets
from .importance.fusion import FusionResult
from .surgery import layer_widths


@dataclass
class PruningReport:
    """What a pruning run did: sizes before and after, per-layer widths, kept groups, the learned blend."""

    importance: str
    layout: str
    pruning_ratio: float
    pruned_layers: list[int]
    params_before: int
    params_after: int
    decoder_params_before: int
    decoder_params_after: int
    achieved_ratio: float
    vanilla_config: bool
    # the dense model: a Hub id or an absolute folder (the default teacher of `hywia recover --objective distillation`)
    source_model: str | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    kept_groups: dict[str, list[int]] = field(default_factory=dict)
    fusion_alpha: dict[str, list[float]] = field(default_factory=dict)  # "layer.kind": fine_estimators..., vector
    fusion_losses: list[float] = field(default_factory=list)
    fusion_ranking: dict[str, str] = field(default_factory=dict)  # kind: the estimate ranking groups inside slots
    ranking_losses: dict[str, dict[str, float]] = field(default_factory=dict)  # kind: candidate: hard-mask loss
    ranking_batches: dict[str, dict[str, int]] = field(default_factory=dict)  # kind: candidate: batches measured
    # reconstruction="least_squares": relative output error of every refit projection on the calibration data
    reconstruction_errors: dict[str, float] = field(default_factory=dict)
    # the compensated choice between whole selections (selection.py): the kept one and each candidate's
    # compensated calibration KL; empty when there was no choice
    selection: str = ""
    selection_losses: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # pruning_steps > 1: each step's own ratio (of what the steps before left), decoder parameters after it, choice
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_json_string(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters of `model`, tied ones once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def build_report(
    model,
    spec,
    config,
    all_sets: list[GroupSet],
    kept: dict,
    fusion: FusionResult | None,
    layer_range: range,
    params_before: int,
    widths_before: list[dict[str, int]],
    vanilla: bool,
) -> PruningReport:
    """The report of a finished run, read from the pruned model and the sets it was pruned with."""
    total_params = sum(gs.num_groups * gs.params_per_group for gs in all_sets)
    after_sets = build_group_sets(model, spec, range(len(widths_before)), ("attention", "mlp"))
    decoder_after = sum(gs.num_groups * gs.params_per_group for gs in after_sets)
    widths_after = layer_widths(model, spec)
    layers = []
    for layer, (before, after) in enumerate(zip(widths_before, widths_after)):
        params = [
            sum(gs.num_groups * gs.params_per_group for gs in sets if gs.layer == layer)
            for sets in (all_sets, after_sets)
        ]
        layers.append(
            {"layer": layer, "before": before, "after": after, "params_before": params[0], "params_after": params[1]}
        )
    return PruningReport(
        importance=config.importance,
        layout=config.layout,
        pruning_ratio=config.pruning_ratio,
        pruned_layers=list(layer_range),
        params_before=params_before,
        params_after=count_parameters(model),
        decoder_params_before=total_params,
        decoder_params_after=decoder_after,
        achieved_ratio=1 - decoder_after / total_params,
        vanilla_config=vanilla,
        source_model=_source_model(model),
        layers=layers,
        kept_groups={f"{layer}.{kind}": indices.tolist() for (layer, kind), indices in kept.items()},
        fusion_alpha={f"{layer}.{kind}": list(alpha) for (layer, kind), alpha in fusion.alpha.items()}
        if fusion
        else {},
        fusion_losses=fusion.losses if fusion else [],
        fusion_ranking=fusion.ranking if fusion else {},
        ranking_losses=fusion.ranking_losses if fusion else {},
        ranking_batches=fusion.ranking_batches if fusion else {},
    )


def _source_model(model) -> str | None:
    """Where the model was loaded from: its `name_or_path`, as an absolute path when it is a local folder."""
    name = getattr(model, "name_or_path", None) or None
    return os.path.abspath(name) if name and os.path.isdir(name) else name
