"""`HyWIAPruner`: load, score, prune, save. The orchestration only; each step lives in its own module."""

from __future__ import annotations

import ctypes
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel
from transformers.utils import logging

from .allocation import plan_pruning, select_groups
from .architectures import ArchitectureSpec, get_architecture
from .configuration import HyWIAConfig
from .data import prepare_calibration_data
from .distributed import (
    RowShardedModel,
    all_reduce_statistics,
    broadcast_kept_groups,
    distributed_world,
    shard_batches,
    summed_gradients,
)
from .groups import GroupSet, build_group_sets, decoder_layers
from .importance.activations import ActivationStatistics, activation_scores
from .importance.estimators import gradient_scores, weight_scores
from .importance.fusion import HybridFusion
from .importance.ranking import FUSED, choose_rankings, rank_slots
from .importance.statistics import GradientStatistics
from .memory import CalibrationModel, check_calibration_memory, estimate_calibration_memory
from .model_card import ModelSource, describe_source, write_model_card
from .modeling import MODELING_FILE
from .offload import (
    check_offloaded_projections,
    drop_restored_weights,
    has_meta_parameters,
    materialised_state_dict,
    needs_materialised_state_dict,
    offloaded_parameter_names,
)
from .surgery import layer_widths, remove_groups, restore_auto_map, rewrite_config

logger = logging.get_logger(__name__)

REPORT_NAME = "hywia_report.json"


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
    layers: list[dict[str, Any]] = field(default_factory=list)
    kept_groups: dict[str, list[int]] = field(default_factory=dict)
    fusion_alpha: dict[str, list[float]] = field(default_factory=dict)  # "layer.kind": fine_estimators..., vector
    fusion_losses: list[float] = field(default_factory=list)
    fusion_ranking: dict[str, str] = field(default_factory=dict)  # kind: the estimate ranking groups inside slots
    ranking_losses: dict[str, dict[str, float]] = field(default_factory=dict)  # kind: candidate: hard-mask loss
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json_string(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


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
        loader = _model_loader(model_or_path, model_class, from_pretrained_kwargs)
        model = loader.from_pretrained(model_or_path, **from_pretrained_kwargs)
        if tokenizer is None:
            tokenizer_kwargs = {k: from_pretrained_kwargs[k] for k in _TOKENIZER_KWARGS if k in from_pretrained_kwargs}
            tokenizer = AutoTokenizer.from_pretrained(model_or_path, **tokenizer_kwargs)
        pruner = cls(model, config, tokenizer)
        pruner.source = describe_source(model_or_path, from_pretrained_kwargs.get("gguf_file"))
        return pruner

    def prune(self, calibration_data: Any = None, show_progress: bool = True) -> PreTrainedModel:
        """Score every group, remove the least important ones physically, and return the pruned model.

        `calibration_data`: a list of strings, a `datasets.Dataset`, a path to a text file, or token ids (see
        `optimum_hywia.data.prepare_calibration_data`). Not needed for the `l2` and `random` baselines.
        """
        if self.report is not None:
            raise RuntimeError("This model is already pruned; create a new HyWIAPruner to prune it again.")
        if self._surgery_failed:
            raise RuntimeError("A previous prune() failed during surgery and left this model modified: reload it.")
        config, model, spec = self.config, self.model, self.spec
        _check_prunable(model)
        seconds: dict[str, float] = {}
        start = time.perf_counter()

        _, layers = decoder_layers(model, spec)
        num_layers = len(layers)
        layer_range = range(*config.resolve_layer_range(num_layers))
        all_sets = build_group_sets(model, spec, range(num_layers), ("attention", "mlp"))
        group_sets = build_group_sets(model, spec, layer_range, config.group_kinds)
        check_offloaded_projections([p.module for gs in group_sets for p in gs.projections])
        total_params = sum(gs.num_groups * gs.params_per_group for gs in all_sets)
        plan = plan_pruning(config, spec, spec.widths_config(model.config), group_sets, total_params)
        params_before = _count_params(model)
        widths_before = layer_widths(model, spec)
        logger.info(f"HyWIA: pruning layers [{layer_range.start}, {layer_range.stop}) of {num_layers}, plan {plan}")

        scores, fusion = self._score(group_sets, plan, num_layers, calibration_data, show_progress, seconds)
        drop_restored_weights(model)
        kept = broadcast_kept_groups(select_groups(scores, group_sets, plan))

        surgery_start = time.perf_counter()
        try:
            remove_groups(group_sets, kept)
            vanilla = rewrite_config(model, spec, widths_before)
        except Exception as error:
            self._surgery_failed = True
            raise RuntimeError(
                f"Pruning failed during surgery ({type(error).__name__}: {error}); the model WAS MODIFIED (some layers "
                "are sliced) and is unusable: reload it before trying again."
            ) from error
        seconds["surgery"] = time.perf_counter() - surgery_start
        seconds["total"] = time.perf_counter() - start
        self.report = self._make_report(
            all_sets, group_sets, kept, fusion, layer_range, params_before, total_params, widths_before, vanilla
        )
        self.report.seconds = seconds
        logger.info(
            f"HyWIA: {params_before:,} -> {self.report.params_after:,} parameters "
            f"({self.report.achieved_ratio:.1%} of decoder-layer parameters removed)"
        )
        return model

    def _score(self, group_sets, plan, num_layers, calibration_data, show_progress, seconds):
        config, model = self.config, self.model
        method = config.importance
        if method in ("l2", "random"):
            scores = weight_scores(method, group_sets, config.seed)
            return self._comparable(scores, group_sets), None
        if calibration_data is None:
            raise ValueError(
                f"importance={method!r} needs calibration_data (a list of strings, a datasets.Dataset, a text file or "
                "token ids); only 'l2' and 'random' prune without it."
            )
        samples = prepare_calibration_data(
            calibration_data,
            self.tokenizer,
            num_samples=config.num_calibration_samples,
            sequence_length=config.calibration_sequence_length,
            seed=config.seed,
            vocab_size=model.get_input_embeddings().num_embeddings,
        )
        batches = list(torch.split(samples, config.calibration_batch_size))
        if method == "wanda_sp":  # forward passes only (no gradient memory); every rank runs every batch
            start = time.perf_counter()
            activations = ActivationStatistics(group_sets)
            progress = show_progress and distributed_world()[0] == 0
            activations.collect(model, batches, progress, config.calibration_micro_batch_size, config.autocast_dtype)
            seconds["activations"] = time.perf_counter() - start
            return self._comparable(activation_scores(activations), group_sets), None
        self._check_memory(group_sets, show_progress)
        rank, world_size = distributed_world()
        show_progress = show_progress and rank == 0
        runner = CalibrationModel(
            model, self.spec, config.calibration_micro_batch_size, config.autocast_dtype, config.gradient_checkpointing
        )
        runner.train(model.training)  # a new nn.Module is in training mode: fusion restores the wrapper's mode
        start = time.perf_counter()
        statistics = GradientStatistics(group_sets)
        statistics.collect(runner, shard_batches(batches, rank, world_size), show_progress)
        all_reduce_statistics(statistics)
        seconds["gradients"] = time.perf_counter() - start
        if method != "hywia":
            return self._comparable(gradient_scores(method, statistics), group_sets), None
        fine = [gradient_scores(name, statistics) for name in config.fine_estimators]
        coarse = gradient_scores("vector", statistics)
        start = time.perf_counter()
        fusion = HybridFusion(
            group_sets,
            fine,
            coarse,
            plan,
            num_layers,
            config.fusion_hidden_size,
            config.seed,
            config.fusion_alpha,
            objective=config.fusion_objective,
        )
        trainer = RowShardedModel(runner) if world_size > 1 else runner
        with summed_gradients(fusion.module):
            result = fusion.train(
                trainer,
                batches,
                config.fusion_steps,
                config.fusion_learning_rate,
                config.fusion_temperature,
                show_progress,
            )
        seconds["fusion"] = time.perf_counter() - start
        estimates = dict(zip((*config.fine_estimators, "vector"), (*fine, coarse)))
        if config.fusion_ranking == "select":
            start = time.perf_counter()
            choice = choose_rankings(
                trainer, batches, group_sets, plan, result.scores, estimates, config.fusion_objective, show_progress
            )
            result.scores, result.ranking, result.ranking_losses = choice.scores, choice.chosen, choice.losses
            seconds["ranking"] = time.perf_counter() - start
        elif config.fusion_ranking != FUSED:
            result.ranking = {kind: config.fusion_ranking for kind in config.group_kinds}
            result.scores = rank_slots(group_sets, result.scores, estimates, result.ranking)
        return result.scores, result

    def _check_memory(self, group_sets: list[GroupSet], show_progress: bool) -> None:
        """Print the calibration memory estimate and refuse a run that cannot fit (`config.check_memory`)."""
        config = self.config
        if not config.check_memory:
            return
        decoder_weights = sum(gs.num_groups * gs.params_per_group for gs in group_sets)
        _, layers = decoder_layers(self.model, self.spec)
        layer_weights = sum(p.numel() for p in layers.parameters() if p.ndim == 2)
        estimate = estimate_calibration_memory(
            self.model,
            self.spec,
            config.calibration_batch_size,
            config.calibration_sequence_length,
            config.calibration_micro_batch_size,
            config.autocast_dtype,
            config.gradient_checkpointing,
            trainable_fraction=min(decoder_weights / max(layer_weights, 1), 1.0),
        )
        logger.info(estimate.summary())
        if show_progress and distributed_world()[0] == 0:
            print(estimate.summary(), flush=True)
        check_calibration_memory(estimate)

    def _comparable(self, scores: dict, group_sets: list[GroupSet]) -> dict:
        """Per-layer ranking compares groups of different sizes: rank by importance per parameter."""
        if self.config.layout != "per_layer":
            return scores
        return {gs.key: scores[gs.key] / gs.params_per_group for gs in group_sets}

    def _make_report(
        self, all_sets, group_sets, kept, fusion, layer_range, params_before, total_params, widths_before, vanilla
    ) -> PruningReport:
        model, spec = self.model, self.spec
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
                {
                    "layer": layer,
                    "before": before,
                    "after": after,
                    "params_before": params[0],
                    "params_after": params[1],
                }
            )
        return PruningReport(
            importance=self.config.importance,
            layout=self.config.layout,
            pruning_ratio=self.config.pruning_ratio,
            pruned_layers=list(layer_range),
            params_before=params_before,
            params_after=_count_params(model),
            decoder_params_before=total_params,
            decoder_params_after=decoder_after,
            achieved_ratio=1 - decoder_after / total_params,
            vanilla_config=vanilla,
            layers=layers,
            kept_groups={f"{layer}.{kind}": indices.tolist() for (layer, kind), indices in kept.items()},
            fusion_alpha={f"{layer}.{kind}": list(alpha) for (layer, kind), alpha in fusion.alpha.items()}
            if fusion
            else {},
            fusion_losses=fusion.losses if fusion else [],
            fusion_ranking=fusion.ranking if fusion else {},
            ranking_losses=fusion.ranking_losses if fusion else {},
        )

    def save_pretrained(self, save_directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the pruned model (safetensors), its config, tokenizer, `hywia_config.json`, the report and README.md.

        The folder is written next to its destination and moved into place at the end, so an interrupted save
        never leaves a folder that looks complete. An existing non-empty folder is replaced only with
        `overwrite=True`. Staging folders left next to the destination by a killed save (`.<name>.tmp-<pid>-*`)
        are removed by the next save to it.
        """
        if self.report is None:
            raise RuntimeError("Call prune() before save_pretrained(): there is no pruned model to save yet.")
        target = Path(save_directory).resolve()
        if target.exists() and not target.is_dir():
            raise ValueError(f"{target} is a file; pass a directory to save the pruned model into.")
        if target.is_dir() and any(target.iterdir()) and not overwrite:
            raise FileExistsError(f"{target} exists and is not empty; pass overwrite=True to replace it.")
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
        try:
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
            _apply_default_permissions(staging)
            _sync_tree(staging)
            _replace_directory(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
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


_TOKENIZER_KWARGS = (
    "gguf_file",
    "revision",
    "token",
    "cache_dir",
    "local_files_only",
    "subfolder",
    "trust_remote_code",
)


def _model_loader(model_or_path: str | os.PathLike, model_class: str | type | None, kwargs: dict[str, Any]) -> Any:
    """The class whose `from_pretrained` loads `model_or_path`: `model_class`, or the family table's Auto class."""
    if model_class is None:
        config_kwargs = {k: kwargs[k] for k in _TOKENIZER_KWARGS if k in kwargs}
        model_config = AutoConfig.from_pretrained(model_or_path, **config_kwargs)
        model_class = get_architecture(model_config).auto_class
    if isinstance(model_class, str):
        name = model_class
        model_class = getattr(transformers, name, None)
        if model_class is None:
            raise ValueError(f"model_class={name!r} is not a transformers class (e.g. 'AutoModel', 'BertModel').")
    if not (isinstance(model_class, type) and callable(getattr(model_class, "from_pretrained", None))):
        raise TypeError(f"model_class must be a transformers Auto or model class (or its name), got {model_class!r}.")
    return model_class


def _count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _check_prunable(model: PreTrainedModel) -> None:
    """Refuse models whose weights cannot be sliced; detach GGUF's quantizer (its weights are plain floats)."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = str(getattr(getattr(quantizer, "quantization_config", None), "quant_method", "")).lower()
    if quantizer is not None and "gguf" not in method:
        raise ValueError(
            f"The model is quantized ({method}); HyWIA slices float weights. Load it without a "
            "quantization_config (float32 or bfloat16), prune, then quantize the pruned model."
        )
    offloaded = offloaded_parameter_names(model) if has_meta_parameters(model) else set()
    for name, param in model.named_parameters():
        if param.device.type == "meta" and name not in offloaded:
            raise ValueError(
                f"Parameter {name} is on the meta device and no accelerate offload hook restores it (the model is "
                "not materialised): HyWIA needs every weight resident, or offloaded by accelerate. CPU/disk offload "
                "IS supported: load the model with a device_map (e.g. HyWIAPruner.from_pretrained(model_id, "
                "device_map='auto', offload_folder='offload')), whose offload hooks restore the weights around "
                "each forward; the pruned weights of offloaded layers are then held in CPU RAM."
            )
        if not param.dtype.is_floating_point:
            raise ValueError(f"Parameter {name} has dtype {param.dtype}; HyWIA needs float weights.")
    if quantizer is not None:  # GGUF weights are dequantized to plain floats at load time: only detach the quantizer
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")


def _apply_default_permissions(folder: Path) -> None:
    """Staging folders are private (mkdtemp); the result gets the permissions a plain mkdir/open would give."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _remove_stale_staging(target: Path) -> None:
    """Delete `.<name>.tmp-<pid>-*` / `.<name>.old-<pid>` folders left next to `target` by a killed save.

    Only folders whose process is gone on this machine are deleted, so a concurrent save is never disturbed.
    """
    for kind in ("tmp", "old"):
        for leftover in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"):
            pid = leftover.name[len(f".{target.name}.{kind}-") :].split("-")[0]
            if leftover.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
                logger.warning(f"HyWIA: removing {leftover}, left by an interrupted save (process {pid}).")
                shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _sync_tree(folder: Path) -> None:
    """Flush the files of `folder` to disk before it is renamed, so a crash right after cannot leave empty files."""
    if os.name != "posix":
        return
    for path in [*folder.rglob("*"), folder]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _exchange_paths(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step with Linux's `renameat2(RENAME_EXCHANGE)`; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # libc without renameat2 (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0


def _replace_directory(staging: Path, target: Path) -> None:
    """Move `staging` to `target`, replacing what is there, with the old contents removed only after the move.

    On Linux an existing `target` is swapped with `staging` atomically, so `target` names a complete checkpoint at
    every instant; where the filesystem cannot, `target` is first renamed to `.<name>.old-<pid>`.
    """
    if target.exists() and _exchange_paths(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the previous checkpoint
        return
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, backup)
    os.replace(staging, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
