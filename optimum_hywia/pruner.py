"""`HyWIAPruner`: the orchestrator of the stages load -> score -> allocate -> remove -> save, one module each.

- load: `loading` (model, tokenizer, checks)      - score: `scoring` + the `importance` registry
- allocate: `allocation` (budget, selection)      - remove: `surgery` (slicing, config, cached widths)
- compensate: `compensation` (refit), `selection` (the compensated choice between whole selections)
- save: `saving` (atomic folders), `report`, `model_card`
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.utils import logging

from .allocation import plan_pruning, select_groups
from .architectures import ArchitectureSpec, get_architecture
from .compensation import check_reconstruction
from .configuration import HyWIAConfig
from .distributed import broadcast_kept_groups
from .groups import build_group_sets, decoder_layers
from .importance.registry import get_importance
from .loading import check_prunable, load_model_and_tokenizer
from .model_card import REPORT_NAME, ModelSource, describe_source, write_model_card
from .modeling import MODELING_FILE
from .offload import (
    check_offloaded_projections,
    drop_restored_weights,
    materialised_state_dict,
    needs_materialised_state_dict,
)
from .report import PruningReport, build_report, count_parameters
from .saving import atomic_directory, check_destination
from .scoring import calibration_batches, held_out_batches, score_groups
from .selection import compensate_best_selection, why_no_choice
from .surgery import layer_widths, remove_groups, restore_auto_map, rewrite_config

logger = logging.get_logger(__name__)

__all__ = ["REPORT_NAME", "HyWIAPruner", "PruningReport"]


@dataclasses.dataclass
class _Step:
    """What one pruning step did (`HyWIAConfig.pruning_steps`): kept groups as indices of the step's own groups."""

    kept: dict
    fusion: Any
    layer_range: range
    vanilla: bool
    errors: dict[str, float]
    selection: str
    selection_losses: dict[str, float]
    seconds: dict[str, float]


def _group_parameters(group_sets: list) -> int:
    """Parameters of the groups of `group_sets`, shared rows excluded (what `pruning_ratio` is a share of)."""
    return sum(gs.num_groups * gs.params_per_group for gs in group_sets)


def _decoder_parameters(model: PreTrainedModel, spec: ArchitectureSpec, num_layers: int) -> int:
    """Prunable parameters of all decoder layers as they are now."""
    return _group_parameters(build_group_sets(model, spec, range(num_layers), ("attention", "mlp")))


class HyWIAPruner:
    """Structured pruning of a transformers model with HyWIA or a single-granularity baseline.

    Example:
        ```python
        pruner = HyWIAPruner.from_pretrained("HuggingFaceTB/SmolLM2-135M", config=HyWIAConfig(pruning_ratio=0.2))
        model = pruner.prune(calibration_data=texts)
        pruner.save_pretrained("smollm2-hywia-20")
        ```
    """

    def __init__(self, model: PreTrainedModel, config: HyWIAConfig | None = None, tokenizer: Any = None):
        self.config = config or HyWIAConfig()
        if not isinstance(self.config, HyWIAConfig):
            raise TypeError(f"config must be a HyWIAConfig, got {type(self.config).__name__}.")
        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}.")
        self.spec: ArchitectureSpec = get_architecture(model.config)
        self.model = model
        self.tokenizer = tokenizer
        self.report: PruningReport | None = None
        self._surgery_failed = False
        # the base model as the saved model card names it (Hub id, licence); from_pretrained refines it
        self.source: ModelSource = describe_source(getattr(model, "name_or_path", None) or None)

    @classmethod
    def from_pretrained(
        cls,
        model_or_path: str | os.PathLike | PreTrainedModel,
        config: HyWIAConfig | None = None,
        tokenizer: Any = None,
        model_class: str | type | None = None,
        **from_pretrained_kwargs: Any,
    ) -> HyWIAPruner:
        """A pruner for a Hub id, a local folder, or a model instance.

        The model is loaded with `model_class`: a transformers Auto class or model class, or its name in
        `transformers` (e.g. `"AutoModelForMaskedLM"`, `transformers.BertModel`). By default it is the Auto class of
        the family's mapping table (`ArchitectureSpec.auto_class`), read from the checkpoint's config:
        `AutoModelForCausalLM` for decoders, `AutoModel` for encoders (BERT). `from_pretrained_kwargs` go to its
        `from_pretrained` (e.g. `gguf_file`, `dtype`, `revision`, `trust_remote_code`, or `device_map` with
        `offload_folder`: CPU/disk-offloaded models are pruned too, see docs/performance.md). The tokenizer is loaded
        from the same place unless given.
        """
        if isinstance(model_or_path, PreTrainedModel):
            if from_pretrained_kwargs or model_class is not None:
                given = sorted(from_pretrained_kwargs) + (["model_class"] if model_class is not None else [])
                raise TypeError(f"from_pretrained arguments {given} need a model id or path, not a model instance.")
            return cls(model_or_path, config, tokenizer)
        model, tokenizer = load_model_and_tokenizer(model_or_path, model_class, tokenizer, from_pretrained_kwargs)
        pruner = cls(model, config, tokenizer)
        pruner.source = describe_source(model_or_path, from_pretrained_kwargs.get("gguf_file"))
        return pruner

    def prune(self, calibration_data: Any = None, show_progress: bool = True) -> PreTrainedModel:
        """Score every group, remove the least important ones physically, and return the pruned model.

        `calibration_data`: a list of strings, a `datasets.Dataset`, a path to a text file, or token ids (see
        `optimum_hywia.data.prepare_calibration_data`). Not needed by weight-only methods (`l2`, `random`).
        """
        if self.report is not None:
            raise RuntimeError("This model is already pruned; create a new HyWIAPruner to prune it again.")
        if self._surgery_failed:
            raise RuntimeError("A previous prune() failed during surgery and left this model modified: reload it.")
        self.config = self._resolved_config(calibration_data)
        check_prunable(self.model)
        config, model, spec = self.config, self.model, self.spec
        num_layers = len(decoder_layers(model, spec)[1])
        original_sets = build_group_sets(model, spec, range(num_layers), ("attention", "mlp"))
        original_params = _group_parameters(original_sets)
        params_before, widths_before = count_parameters(model), layer_widths(model, spec)
        steps: list[_Step] = []
        summaries: list[dict[str, Any]] = []
        current = original_params
        for number in range(1, config.pruning_steps + 1):
            # each step removes an equal share of the original parameters from what the steps before left
            target = config.pruning_ratio * number / config.pruning_steps
            ratio = 1 - (1 - target) * original_params / current
            if ratio <= 0:  # an earlier step's rounding already removed this step's share
                continue
            if config.pruning_steps > 1:
                logger.info(f"HyWIA: step {number} of {config.pruning_steps}, {target:.1%} removed in all")
            step_config = dataclasses.replace(config, pruning_ratio=ratio, pruning_steps=1)
            steps.append(self._prune_step(step_config, calibration_data, show_progress))
            current = _decoder_parameters(model, spec, num_layers)
            summaries.append(
                {
                    "pruning_ratio": ratio,
                    "decoder_params_after": current,
                    "selection": steps[-1].selection,
                    "seconds": steps[-1].seconds["total"],
                }
            )

        kept = dict(steps[0].kept)
        for step in steps[1:]:  # kept groups as indices of the original model's groups
            kept.update({key: kept[key][indices] if key in kept else indices for key, indices in step.kept.items()})
        last = steps[-1]
        self.report = build_report(
            model,
            spec,
            config,
            original_sets,
            kept,
            last.fusion,
            last.layer_range,
            params_before,
            widths_before,
            last.vanilla,
        )
        self.report.seconds = {
            name: sum(step.seconds.get(name, 0.0) for step in steps)
            for name in dict.fromkeys(name for step in steps for name in step.seconds)
        }
        self.report.source_model = self.source.base_model or self.report.source_model  # Hub id when known
        self.report.reconstruction_errors = last.errors
        self.report.selection, self.report.selection_losses = last.selection, last.selection_losses
        if len(steps) > 1:
            self.report.steps = summaries
        logger.info(
            f"HyWIA: {params_before:,} -> {self.report.params_after:,} parameters "
            f"({self.report.achieved_ratio:.1%} of decoder-layer parameters removed)"
        )
        return model

    def _prune_step(self, config: HyWIAConfig, calibration_data: Any, show_progress: bool) -> _Step:
        """One pass of the stages score -> allocate -> remove -> compensate at `config.pruning_ratio`."""
        model, spec = self.model, self.spec
        seconds: dict[str, float] = {}
        start = time.perf_counter()

        _, layers = decoder_layers(model, spec)
        num_layers = len(layers)
        layer_range = range(*config.resolve_layer_range(num_layers))
        all_sets = build_group_sets(model, spec, range(num_layers), ("attention", "mlp"))
        group_sets = build_group_sets(model, spec, layer_range, config.group_kinds)
        check_offloaded_projections([p.module for gs in group_sets for p in gs.projections])
        check_reconstruction(spec, config, group_sets)
        plan = plan_pruning(config, spec, spec.widths_config(model.config), group_sets, _group_parameters(all_sets))
        widths_before = layer_widths(model, spec)
        first, stop = layer_range.start, layer_range.stop
        logger.info(f"HyWIA: pruning layers [{first}, {stop}) of {num_layers}: {plan.describe()}")

        batches = calibration_batches(model, config, self.tokenizer, calibration_data)
        scores, fusion, output_fisher = score_groups(
            model, spec, config, group_sets, plan, num_layers, batches, show_progress, seconds
        )
        drop_restored_weights(model)
        kept = broadcast_kept_groups(select_groups(scores, group_sets, plan))
        candidates = {config.importance: kept}
        for name, alternative in fusion.alternatives.items() if fusion else ():
            candidates[name] = broadcast_kept_groups(select_groups(alternative, group_sets, plan))
        held_out = []  # fresh windows of the calibration text judge the choice between selections
        if len(candidates) > 1 and config.reconstruction != "none":  # read before any surgery: it cannot half-prune
            held_out = held_out_batches(model, config, self.tokenizer, calibration_data)

        surgery_start = time.perf_counter()
        choice = None
        try:
            errors: dict[str, float] = {}
            if config.reconstruction == "none":
                remove_groups(group_sets, kept)
            else:
                choice = compensate_best_selection(
                    model,
                    spec,
                    config,
                    group_sets,
                    candidates,
                    batches,
                    widths_before,
                    show_progress,
                    held_out,
                    output_fisher,
                )
                kept, errors = choice.kept, choice.errors
            vanilla = rewrite_config(model, spec, widths_before)
        except Exception as error:
            self._surgery_failed = True
            raise RuntimeError(
                f"Pruning failed during surgery ({type(error).__name__}: {error}); the model WAS MODIFIED (some layers "
                "are sliced) and is unusable: reload it before trying again."
            ) from error
        seconds["surgery" if config.reconstruction == "none" else "compensation"] = time.perf_counter() - surgery_start
        seconds["total"] = time.perf_counter() - start
        chosen = choice is not None and len(candidates) > 1
        return _Step(
            kept=kept,
            fusion=fusion,
            layer_range=layer_range,
            vanilla=vanilla,
            errors=errors,
            selection=choice.chosen if chosen else "",
            selection_losses=choice.losses if chosen else {},
            seconds=seconds,
        )

    def _resolved_config(self, calibration_data: Any) -> HyWIAConfig:
        """The config with its data-dependent defaults (`None`) decided, as `hywia_config.json` records them."""
        config, changes = self.config, {}
        if config.reconstruction is None:  # compensate whenever there is data to fit on
            changes["reconstruction"] = "none" if calibration_data is None else "least_squares"
        reconstruction = changes.get("reconstruction", config.reconstruction)
        if config.reconstruction_reselect is None:  # where the gradient pass collects the output Fisher anyway
            method = get_importance(config.importance)
            changes["reconstruction_reselect"] = reconstruction == "least_squares" and method.needs_gradients
        if config.fusion_ranking is None:  # the compensated choice between selections supersedes the ranking choice
            compensated = reconstruction != "none"
            choice = compensated and config.selection_candidates and why_no_choice(self.model, self.spec) is None
            changes["fusion_ranking"] = "fused" if choice else "select"
        return dataclasses.replace(config, **changes) if changes else config

    def save_pretrained(self, save_directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the pruned model (safetensors), its config, tokenizer, `hywia_config.json`, the report and README.md.

        The folder is written next to its destination and moved into place at the end, so an interrupted save
        never leaves a folder that looks complete. An existing non-empty folder is replaced only with
        `overwrite=True`. Staging folders left next to the destination by a killed save (`.<name>.tmp-<pid>-*`)
        are removed by the next save to it.
        """
        if self.report is None:
            raise RuntimeError("Call prune() before save_pretrained(): there is no pruned model to save yet.")
        target = check_destination(save_directory, overwrite, "the pruned model")
        with atomic_directory(target) as staging:
            offloaded = needs_materialised_state_dict(self.model)
            self.model.save_pretrained(staging, state_dict=materialised_state_dict(self.model) if offloaded else None)
            restore_auto_map(self.model, staging)  # remote-code models rewrite auto_map to their own class
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(staging)
            self.config.save_pretrained(staging)
            (staging / REPORT_NAME).write_text(self.report.to_json_string())
            write_model_card(staging, self.source, name=target.name)
            if getattr(self.model.config, "hywia_linear_shapes", None):
                shutil.copyfile(MODELING_FILE, staging / os.path.basename(MODELING_FILE))
        logger.info(f"HyWIA: pruned model saved to {target}")
        return target

    def push_to_hub(
        self, repo_id: str, private: bool | None = None, token: str | None = None, commit_message: str | None = None
    ) -> str:
        """Save the pruned model to a temporary folder and upload it to the Hub; returns the commit URL."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as folder:
            saved = self.save_pretrained(Path(folder) / repo_id.split("/")[-1])
            write_model_card(saved, self.source, name=repo_id)  # loading examples name the repo
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=saved,
                commit_message=commit_message or f"Upload HyWIA-pruned model ({self.config.pruning_ratio:.0%})",
            )
        return str(commit)
