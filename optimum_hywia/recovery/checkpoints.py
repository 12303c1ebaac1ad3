"""Resumable recovery runs (a fingerprint of what decides the result, the newest complete checkpoint) and the
recovered model's checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..model_card import RECOVERY_LOG_NAME
from ..saving import atomic_directory, check_destination

logger = logging.get_logger(__name__)

RESUME_FREE_FIELDS = ("logging_steps", "save_steps")  # they do not change what a run computes


class RunFingerprint(TrainerCallback, ExportableState):
    """Hashes of what decides a run's result, stored by Trainer in every checkpoint's `trainer_state.json`."""

    def __init__(self, fingerprint: dict[str, str]):
        self.fingerprint = fingerprint

    def state(self) -> dict[str, Any]:
        return {"args": {"fingerprint": self.fingerprint}, "attributes": {}}


def run_fingerprint(model, examples, config, target_modules, teacher) -> dict[str, str]:
    """Hashes of what decides a run's result: model shapes and weights, data, settings, and the teacher's weights."""

    def weights(module: torch.nn.Module) -> tuple[str, str]:
        shapes, values = hashlib.sha256(), hashlib.sha256()
        for name, param in module.named_parameters():
            shapes.update(f"{name}:{tuple(param.shape)}:{param.dtype};".encode())
            flat = param.detach().flatten()
            values.update(flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy().tobytes())
        return shapes.hexdigest(), values.hexdigest()

    data = hashlib.sha256()
    for ids, labels in examples:
        data.update(ids.numpy().tobytes() + labels.numpy().tobytes())
    settings = {k: v for k, v in config.to_dict().items() if k not in RESUME_FREE_FIELDS}
    settings = json.dumps({**settings, "target_modules": list(target_modules)}, sort_keys=True)
    result = dict(zip(("model_shapes", "model_weights"), weights(model)))
    result.update(data=data.hexdigest(), config=hashlib.sha256(settings.encode()).hexdigest())
    if teacher is not None:
        result["teacher"] = hashlib.sha256("".join(weights(teacher)).encode()).hexdigest()
    return result


def resume_point(run_dir: Path, fingerprint: dict[str, str]) -> tuple[str | None, TrainerState | None]:
    """The newest checkpoint of `run_dir` with a complete trainer state (Trainer writes it last), and that state.

    It must hold this run's fingerprint. Every other `checkpoint-*` folder (one a kill left half-written, or an older
    one a kill spared from rotation) is deleted, so no leftover outlives the next run.
    """
    states = {}
    for folder in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        try:
            states[folder] = TrainerState.load_from_json(str(folder / TRAINER_STATE_NAME))
        except (OSError, ValueError, TypeError):  # a kill left it incomplete
            continue
    newest = max(states, key=lambda folder: states[folder].global_step, default=None)
    if newest is not None:
        saved = states[newest].stateful_callbacks.get(RunFingerprint.__name__, {}).get("args", {})
        changed = [key for key, value in fingerprint.items() if saved.get("fingerprint", {}).get(key) != value]
        if changed:
            raise ValueError(
                f"{newest} holds a recovery checkpoint of a different run (changed: {', '.join(changed)}); pass "
                f"another output_dir, or delete {run_dir} to start over."
            )
    for folder in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if folder != newest and folder.is_dir():
            logger.warning(f"HyWIA recovery: removing {folder}, left incomplete or superseded by an interrupted run.")
            shutil.rmtree(folder, ignore_errors=True)
    return (str(newest), states[newest]) if newest is not None else (None, None)


def save_recovered_model(
    model: PreTrainedModel,
    tokenizer: Any,
    pruned_checkpoint: str | os.PathLike,
    save_directory: str | os.PathLike,
    overwrite: bool = False,
) -> Path:
    """Save a recovered model as a HyWIA checkpoint like the one it came from, with an updated model card.

    The pruning files of `pruned_checkpoint` (`hywia_config.json`, `hywia_report.json`, and `modeling_hywia.py` for
    per-layer layouts) are carried over and the recovery log is added; the card keeps the base model and licence but
    not the evaluation results (they describe the model before recovery). The folder is written next to its
    destination and moved into place at the end; an existing non-empty one is replaced only with `overwrite=True`.
    """
    from ..configuration import CONFIG_NAME
    from ..model_card import REPORT_NAME, source_from_card, write_model_card
    from ..modeling import MODELING_FILE

    source = Path(pruned_checkpoint)
    target = check_destination(save_directory, overwrite, "the recovered model")
    if target == source.resolve():
        raise ValueError(f"{target} is the pruned checkpoint itself; save the recovered model to another folder.")
    with atomic_directory(target) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        for name in (CONFIG_NAME, REPORT_NAME, os.path.basename(MODELING_FILE)):
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)
        log = getattr(model, "hywia_recovery_log", None)
        if log is not None:
            (staging / RECOVERY_LOG_NAME).write_text(json.dumps(log.to_dict(), indent=2) + "\n")
        if (staging / REPORT_NAME).is_file():
            write_model_card(staging, source_from_card(source / "README.md"), name=target.name)
    return target
