"""`HyWIAConfig`: everything that decides how a model is pruned, saved as `hywia_config.json`."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "hywia_config.json"

FINE_ESTIMATORS = ("element1", "element2")
FUSION_OBJECTIVES = ("distillation", "lm")
FUSION_RANKINGS = ("select", "fused", "element1", "element2", "vector")
SELECTION_CANDIDATES = ("element2", "vector")  # docs/method.md §7b: vector's counts win at 50%, element1's never
GROUP_KINDS = ("attention", "mlp")
LAYOUTS = ("uniform", "per_layer")
AUTOCAST_DTYPES = ("bfloat16",)
RECONSTRUCTIONS = ("none", "bias", "least_squares")


@dataclass
class HyWIAConfig:
    """Configuration of a HyWIA structured-pruning run.

    Args:
        pruning_ratio: fraction of the decoder layers' prunable parameters (attention q/k/v/o and MLP gate/up/down
            weights of *all* decoder layers) to remove. Layers outside `layer_range` are kept whole, so the layers
            inside it lose a larger share.
        pruning_steps: prune gradually, in this many steps, each removing an equal share of the original
            parameters from the model the steps before left (pruned and compensated), scored afresh on it: every
            stage (score, allocate, remove, compensate) runs once per step, so the prune costs about `pruning_steps`
            times as much. 1 (default): one shot. Measured on SmolLM2-135M: docs/method.md §7b, "Gradual pruning".
        importance: `"hywia"` (fine- and coarse-grained Taylor scores fused by a learned attention module) or one of
            the single-granularity baselines `"element1"`, `"element2"`, `"vector"`, `"l2"`, `"random"`, or the
            activation-based structured baseline `"wanda_sp"` (FLAP's Wanda-sp: `|W| * ||X||` summed over the input
            columns of `o_proj`/`down_proj`, forward passes only), or the retraining-free leaders `"flap"` (with
            `reconstruction="bias"` as published) and `"slimgpt"` (structured OBS; needs
            `reconstruction="least_squares"`). Every registered method: docs/method.md §0.
        fine_estimators: the fine-grained (per-weight) estimators HyWIA fuses with the coarse-grained `vector` one:
            `"element1"` (first-order Taylor) and/or `"element2"` (second order, Fisher diagonal). Both by default:
            the attention picks, per layer and module kind, the order and granularity it trusts.
        fusion_steps: optimisation steps of the end-to-end fusion training (one calibration batch each).
        fusion_learning_rate: Adam learning rate of the fusion module.
        fusion_hidden_size: width of the fusion attention's query/key space.
        fusion_temperature: (start, end) temperature of the soft masks, annealed geometrically during training.
        fusion_objective: what the fusion training minimises on calibration data: `"distillation"` (the KL
            divergence from the dense model's next-token distributions to the masked model's: keep what the model
            predicts) or `"lm"` (the causal-LM loss of the masked model: fit the calibration text). Encoders always use
            their masked self-distillation loss.
        fusion_alpha: a fixed fine-grained weight in [0, 1] for every slot instead of the learned blend (no fusion
            training; an ablation, shared evenly by the fine estimators: 0 ranks like `vector`, and with one fine
            estimator 1 ranks like it).
        fusion_ranking: which groups inside each slot go, once the fused scores have set how many: `"select"` (the
            ranking, per group kind, among the fused score and each single estimate, whose hard-masked model has the
            lowest `fusion_objective` on the calibration batches; a few extra forward passes), `"fused"` (the fused
            score's own order), or one estimate's name (`"element1"`, `"element2"`, `"vector"`: an ablation).
            `None` (default): `"fused"` when the compensated choice between whole selections runs
            (`selection_candidates`, with compensation, on a model that is not offloaded), else `"select"`:
            compensation flattens the differences between rankings inside the fused counts, so the ranking choice
            would not change which selection wins the compensated choice (docs/method.md §7b); the saved
            `hywia_config.json` records the one used.
        group_kinds: which prunable groups to remove: `"attention"` (KV-head groups) and/or `"mlp"` (channels).
        layer_range: `[start, end)` decoder layers to prune. `None`: every layer for the `uniform` layout (so that
            all layers share one width and the vanilla config describes them) and for `per_layer`, whose global
            ranking decides how much each layer loses (keeping the first and last layers whole, as LLM-Pruner does,
            was worse with compensation at 50%: docs/method.md §6).
        layout: `"uniform"` (the same widths in every pruned layer; loads with vanilla transformers) or
            `"per_layer"` (one global ranking; widths differ per layer; loads with `trust_remote_code=True`).
        num_calibration_samples: calibration windows used for gradients and fusion training (or activations).
            `None` (default): 256 windows of text; rows of token ids (a 2-D tensor, equal-length id lists, a dataset
            of `input_ids`) are samples already and are all used as given.
        calibration_sequence_length: tokens per calibration window. `None` (default): 128 for text; token-id rows
            keep their own length.
        calibration_batch_size: windows per forward/backward pass.
        round_to: kept MLP widths are rounded to a multiple of this (GEMM-friendly shapes), in both layouts; a layer
            may also keep its whole width. Must not exceed any pruned layer's MLP width.
        head_round_to: kept KV-head groups per pruned layer are rounded to a multiple of this (or all of them), in
            both layouts. A KV-head group is one KV head with its `num_attention_heads / num_key_value_heads` query
            heads, so the kept query heads are a multiple of `head_round_to` times that (with MHA, KV groups are the
            heads; with multi-query attention, each query head is a group). Must not exceed the number of groups;
            with the `uniform` layout it must also leave a pruned head count the vanilla config accepts (Llama:
            `hidden_size` divisible by the query-head count), otherwise a clear error lists the values that do.
        calibration_micro_batch_size: rows per forward/backward pass inside a calibration batch (`None`: the whole
            batch). Each micro-batch is checkpointed and recomputed during backward, so the statistics stay those of
            the whole batch while activations shrink; the batch gradient of the pruned weights is accumulated once.
        autocast_dtype: `None` (the model's dtype) or `"bfloat16"`: autocast of the calibration forward passes.
        gradient_checkpointing: recompute each decoder layer during backward instead of keeping its activations.
        check_memory: print a memory estimate before calibration and refuse a run that cannot fit.
        seed: seed of calibration sampling, fusion initialisation and the `"random"` baseline.
        reconstruction: what happens to the projections that a group slices along their input (`o_proj`,
            `down_proj`, ...) when groups are removed (`optimum_hywia.compensation`): `"none"` (slice only),
            `"bias"` (FLAP: the removed channels' mean contribution moves into the bias) or `"least_squares"` (the
            kept columns are refit, layer by layer on the pruned model's own hidden states, to reproduce the dense
            projection's output on the calibration data). Both need calibration data, whatever the importance.
            `None` (default): `"least_squares"` when `prune()` is given calibration data, else `"none"`; the saved
            `hywia_config.json` records the one used (docs/results.md: least squares wins on every held-out text).
        reconstruction_ridge: ridge of the least-squares refit toward the sliced dense weights, relative to the mean
            diagonal of the inputs' Gram matrix (0: the plain least-squares solution; large: plain slicing).
        reconstruction_drift: share `β` of the residual stream's drift from the dense model that each least-squares
            refit also absorbs: the refit reproduces `X Wᵀ + β · (r_dense − r)`, where `r` is the residual stream right
            after the projection's output joins it, on the pruned model and on the dense one (same tokens; the
            family table's `residual_points`), so each layer corrects part of what earlier pruned layers changed.
            0: reproduce the projection's own output only (SparseGPT/SlimGPT). Costs one more forward pass of each
            layer over the calibration data and the dense model's hidden states beside the pruned ones.
        reconstruction_bias: let compensation fit a bias where the projection has none but the family's config can
            switch one on (Llama's `attention_bias` / `mlp_bias`; docs/architectures.md); the checkpoint then carries
            zero biases on the other projections of that kind and still loads with the family's class.
        reconstruction_reselect: with least squares, re-choose which groups of each layer go, layer by layer on the
            pruned model's own inputs, by greedy structured OBS (SlimGPT's: the groups whose removal, after the
            refit, changes the projection's output the least; toward the drift-corrected target with
            `reconstruction_drift`); the importance still decides how many groups each layer keeps. `None`
            (default): on where compensation is least squares and the importance runs a gradient pass, which then
            also collects the output Fisher the default damping judges in (`hywia`, `element1`, `element2`,
            `vector`); off for the others (`flap`, `wanda_sp`, `l2`, `random`; `slimgpt` always re-chooses by its
            own plain OBS). On SmolLM2-135M, judged in the output Fisher's metric, it lowered HyWIA's perplexity on
            every held-out text at 50% and on average at 20%; judged by the plain squared error, at 50% only
            (docs/results_compensation.md). Costs one greedy OBS per pruned kind and layer (about 50 s per
            compensation pass for SmolLM2-135M on 2 CPU cores).
        reconstruction_reselect_damping: how `reconstruction_reselect` measures a removal's cost. A number `δ`: the
            change of the projection's output in the metric of its output Fisher `F` (the calibration loss's
            gradients at that output, from the gradient pass; one more if the importance takes none), damped
            `F + δ · mean(diag F) · I`, so a removal costs what the loss cares about; `None`: the plain squared
            error of the layer-wise OBS (SlimGPT's). Memory: one `[hidden, hidden]` float32 matrix per pruned layer
            and kind.
        selection_candidates: single estimates (`element1`, `element2`, `vector`) whose own selection -- their
            per-layer counts and ranking over the same plan -- HyWIA weighs against its own once compensation is on:
            each candidate is removed and compensated, and the one whose compensated model is closest to the dense
            model (KL of the next-token distributions) on held-out windows of the calibration text, four times as
            long as calibration's and sharing no token with them, is kept (`optimum_hywia.selection`;
            `PruningReport.selection`). The candidates are compensated in lockstep, sharing the passes that do not
            depend on the selection: each costs a little over half a compensation pass and one copy of the model
            while it runs; `()` keeps HyWIA's selection without the choice.
    """

    pruning_ratio: float = 0.2
    pruning_steps: int = 1
    importance: str = "hywia"
    fine_estimators: tuple[str, ...] = FINE_ESTIMATORS
    fusion_steps: int = 16
    fusion_learning_rate: float = 0.05
    fusion_hidden_size: int = 8
    fusion_temperature: tuple[float, float] = (1.0, 0.05)
    fusion_objective: str = "distillation"
    fusion_alpha: float | None = None
    fusion_ranking: str | None = None
    group_kinds: tuple[str, ...] = GROUP_KINDS
    layer_range: tuple[int, int] | None = None
    layout: str = "uniform"
    num_calibration_samples: int | None = None
    calibration_sequence_length: int | None = None
    calibration_batch_size: int = 8
    round_to: int = 1
    head_round_to: int = 1
    calibration_micro_batch_size: int | None = None
    autocast_dtype: str | None = None
    gradient_checkpointing: bool = False
    check_memory: bool = True
    seed: int = 0
    reconstruction: str | None = None
    reconstruction_ridge: float = 0.01
    reconstruction_drift: float = 0.25
    reconstruction_bias: bool = True
    reconstruction_reselect: bool | None = None
    reconstruction_reselect_damping: float | None = 0.01
    selection_candidates: tuple[str, ...] = SELECTION_CANDIDATES
    optimum_hywia_version: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.group_kinds = _as_tuple("group_kinds", self.group_kinds, 'e.g. ["attention", "mlp"]', names=True)
        self.fine_estimators = _as_tuple(
            "fine_estimators", self.fine_estimators, 'e.g. ["element1", "element2"]', names=True
        )
        self.selection_candidates = _as_tuple(
            "selection_candidates", self.selection_candidates, 'e.g. ["element2"], or [] for none', names=True
        )
        self.fusion_temperature = _as_tuple("fusion_temperature", self.fusion_temperature, "e.g. [1.0, 0.05]")
        if self.layer_range is not None:
            self.layer_range = _as_tuple("layer_range", self.layer_range, "e.g. [2, 30], or null for the default")
        if not isinstance(self.optimum_hywia_version, str):
            raise ValueError(f"optimum_hywia_version must be a string, got {self.optimum_hywia_version!r}.")
        if not self.optimum_hywia_version:
            from . import __version__

            self.optimum_hywia_version = __version__
        self.validate()

    def validate(self) -> None:
        """Raise a `ValueError` that says what to change for any field that is out of range."""
        _check_number("pruning_ratio", self.pruning_ratio, float)
        if not 0.0 < self.pruning_ratio < 1.0:
            raise ValueError(f"pruning_ratio must be in (0, 1), got {self.pruning_ratio}: e.g. 0.2 removes 20%.")
        from .importance.registry import importance_names  # the registry: built-in and registered methods

        _check_choice("importance", self.importance, importance_names())
        _check_subset("fine_estimators", self.fine_estimators, FINE_ESTIMATORS)
        _check_choice("layout", self.layout, LAYOUTS)
        _check_choice("fusion_objective", self.fusion_objective, FUSION_OBJECTIVES)
        if self.fusion_ranking is not None:
            _check_choice("fusion_ranking", self.fusion_ranking, FUSION_RANKINGS)
        if self.fusion_ranking in FUSION_RANKINGS[2:] and self.fusion_ranking not in (*self.fine_estimators, "vector"):
            raise ValueError(
                f"fusion_ranking={self.fusion_ranking!r} ranks by an estimate HyWIA does not compute: add it to "
                f"fine_estimators (now {list(self.fine_estimators)}), or use 'select' or 'fused'."
            )
        _check_subset("group_kinds", self.group_kinds, GROUP_KINDS)
        if self.selection_candidates:
            _check_subset("selection_candidates", self.selection_candidates, (*FINE_ESTIMATORS, "vector"))
        for name in ("fusion_steps",):
            _check_number(name, getattr(self, name), int)
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("num_calibration_samples", "calibration_sequence_length"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), int)
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be >= 1 or None (as given / default), got {getattr(self, name)}.")
        for name in (
            "pruning_steps",
            "fusion_hidden_size",
            "calibration_batch_size",
            "round_to",
            "head_round_to",
        ):
            _check_number(name, getattr(self, name), int)
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.calibration_micro_batch_size is not None:
            _check_number("calibration_micro_batch_size", self.calibration_micro_batch_size, int)
            if self.calibration_micro_batch_size < 1:
                raise ValueError(
                    f"calibration_micro_batch_size must be >= 1 or None, got {self.calibration_micro_batch_size}."
                )
        if self.autocast_dtype is not None:
            _check_choice("autocast_dtype", self.autocast_dtype, AUTOCAST_DTYPES)
        if self.reconstruction is not None:
            _check_choice("reconstruction", self.reconstruction, RECONSTRUCTIONS)
        _check_number("reconstruction_ridge", self.reconstruction_ridge, float)
        if not 0 <= self.reconstruction_ridge < math.inf:
            raise ValueError(f"reconstruction_ridge must be >= 0 and finite, got {self.reconstruction_ridge}.")
        _check_number("reconstruction_drift", self.reconstruction_drift, float)
        if not 0 <= self.reconstruction_drift <= 1:
            raise ValueError(f"reconstruction_drift must be between 0 and 1, got {self.reconstruction_drift}.")
        if self.reconstruction_reselect_damping is not None:
            _check_number("reconstruction_reselect_damping", self.reconstruction_reselect_damping, float)
            if not 0 <= self.reconstruction_reselect_damping < math.inf:
                raise ValueError(
                    "reconstruction_reselect_damping must be >= 0 and finite (or None for the plain squared error), "
                    f"got {self.reconstruction_reselect_damping}."
                )
        for name in ("gradient_checkpointing", "check_memory", "reconstruction_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        if self.reconstruction_reselect is not None and not isinstance(self.reconstruction_reselect, bool):
            raise ValueError(
                "reconstruction_reselect must be true, false or null (on where the importance takes a gradient "
                f"pass), got {self.reconstruction_reselect!r}."
            )
        _check_number("seed", self.seed, int)
        if self.fusion_alpha is not None:
            _check_number("fusion_alpha", self.fusion_alpha, float)
            if not 0.0 <= self.fusion_alpha <= 1.0:
                raise ValueError(f"fusion_alpha must be in [0, 1] (or None to learn it), got {self.fusion_alpha}.")
        _check_number("fusion_learning_rate", self.fusion_learning_rate, float)
        if not 0 < self.fusion_learning_rate < math.inf:
            raise ValueError(f"fusion_learning_rate must be > 0 and finite, got {self.fusion_learning_rate}.")
        if len(self.fusion_temperature) != 2 or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < math.inf
            for t in self.fusion_temperature
        ):
            raise ValueError(
                "fusion_temperature must be two positive numbers (start, end) like [1.0, 0.05], "
                f"got {self.fusion_temperature}."
            )
        if self.layer_range is not None:
            if len(self.layer_range) != 2 or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.layer_range
            ):
                raise ValueError(f"layer_range must be two integers [start, end), got {self.layer_range}.")
            start, end = self.layer_range
            if not 0 <= start < end:
                raise ValueError(f"layer_range must satisfy 0 <= start < end, got {self.layer_range}.")

    @property
    def reselects_by_output_fisher(self) -> bool:
        """Whether compensation re-chooses groups by OBS in the output Fisher's metric (the gradient pass collects
        it). Read on a resolved config (`reconstruction` decided)."""
        return (
            self.reconstruction == "least_squares"
            and self.reconstruction_reselect
            and self.reconstruction_reselect_damping is not None
        )

    def resolve_layer_range(self, num_layers: int) -> tuple[int, int]:
        """The `[start, end)` layers to prune for a model with `num_layers` decoder layers."""
        if self.layer_range is None:
            return 0, num_layers
        start, end = self.layer_range
        if end > num_layers:
            raise ValueError(
                f"layer_range {list(self.layer_range)} goes past the model's {num_layers} decoder layers: "
                f"use an end <= {num_layers}."
            )
        return start, end

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyWIAConfig:
        """Build a config from `hywia_config.json` content; unknown keys and wrong types get a `ValueError`."""
        if not isinstance(data, dict):
            raise ValueError(f"A HyWIAConfig is built from a dict (a JSON object), got {type(data).__name__}.")
        if "fine_estimator" in data and "fine_estimators" not in data:  # older files: one fine estimator
            data = {**data, "fine_estimators": [data["fine_estimator"]]}
            del data["fine_estimator"]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown HyWIAConfig keys {unknown}; known keys are {sorted(known)}.")
        return cls(**data)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `hywia_config.json` into `save_directory` and return its path."""
        path = Path(save_directory)
        if path.is_file():
            raise ValueError(f"save_directory {path} is a file; pass a directory.")
        path.mkdir(parents=True, exist_ok=True)
        target = path / CONFIG_NAME
        target.write_text(self.to_json_string())
        return target

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **hub_kwargs: Any) -> HyWIAConfig:
        """Load from a folder holding `hywia_config.json`, that file itself, or a Hub repo id."""
        path = Path(name_or_path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            if Path(name_or_path).exists():
                raise FileNotFoundError(f"No {CONFIG_NAME} in {name_or_path}.")
            if _is_local_path(name_or_path):  # a typo'd folder: say so instead of asking the Hub
                raise FileNotFoundError(
                    f"{name_or_path} does not exist: pass a folder holding {CONFIG_NAME}, that file, or a Hub repo id."
                )
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(str(name_or_path), CONFIG_NAME, **hub_kwargs))
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}.")
        return cls.from_dict(data)


def _is_local_path(name_or_path: str | os.PathLike) -> bool:
    """Whether `name_or_path` can only mean a local path (a Hub repo id is `name` or `owner/name`)."""
    text = os.fspath(name_or_path)
    return (
        isinstance(name_or_path, os.PathLike)
        or os.path.isabs(text)
        or text.startswith((".", "~"))
        or text.count("/") > 1
        or os.sep in text.replace("/", "")
        or text.endswith(".json")
    )


def _as_tuple(name: str, value: Any, example: str, names: bool = False) -> tuple:
    if names and isinstance(value, str):  # a single name stands for a one-element list
        return (value,)
    if not isinstance(value, (list, tuple, range)):
        raise ValueError(f"{name} must be a list, {example}; got {value!r}.")
    return tuple(value)


def _check_number(name: str, value: Any, kind: type) -> None:
    allowed = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise ValueError(f"{name} must be {'a number' if kind is float else 'an integer'}, got {value!r}.")


def _check_subset(name: str, values: tuple, choices: tuple[str, ...]) -> None:
    if not values or any(value not in choices for value in values):
        raise ValueError(f"{name} must be a non-empty subset of {list(choices)}, got {values}.")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} has duplicates: {values}.")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")
