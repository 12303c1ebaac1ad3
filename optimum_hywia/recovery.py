"""Recovery: a short fine-tuning of a pruned model on `transformers.Trainer`, with LoRA (peft, merged back so the
result is a plain model) or all weights, on the LM loss or by distillation from the dense model.

```python
model = recover(pruned_model, tokenizer, texts, RecoveryConfig(max_steps=200), output_dir="recovery-run")
model = recover(pruned_model, tokenizer, texts, RecoveryConfig(objective="distillation"), teacher=dense_model)
```

With an `output_dir`, Trainer writes a checkpoint there (`checkpoint-<step>`, `trainer_state.json` last) every
`save_steps` steps, at the end, and on Ctrl-C. Calling `recover` again with the same arguments resumes from the newest
complete one to the weights of an uninterrupted run; a fingerprint kept in the trainer state refuses a different run,
and checkpoints a killed run left incomplete are deleted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState, PrinterCallback, ProgressCallback, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .architectures import GENERATIVE_AUTO_CLASSES, auto_class_for, get_architecture
from .data.training import DATA_FORMATS, IGNORE_INDEX, Collator, build_examples, load_records
from .model_card import RECOVERY_LOG_NAME
from .offload import execution_device
from .saving import atomic_directory, check_destination

logger = logging.get_logger(__name__)

LR_SCHEDULERS = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}  # ours: Trainer's
METHODS = ("lora", "full")
OBJECTIVES = ("lm", "distillation")
# RecoveryConfig's checks: integer fields with their minimum, number fields with their range, choices
_POSITIVE = ("rank", "max_steps", "batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps")
_MINIMA = {**dict.fromkeys(_POSITIVE, 1), "warmup_steps": 0, "seed": 0, "sequence_length": 2}
_RANGES = {
    **dict.fromkeys(("alpha", "learning_rate", "temperature"), ("a number > 0", lambda v: v > 0)),
    **dict.fromkeys(("weight_decay", "max_grad_norm"), ("a number >= 0", lambda v: v >= 0)),
    "dropout": ("in [0, 1)", lambda v: 0 <= v < 1),
    "distillation_weight": ("in [0, 1]", lambda v: 0 <= v <= 1),
}
_CHOICES = {"method": METHODS, "objective": OBJECTIVES, "data_format": DATA_FORMATS, "lr_scheduler": (*LR_SCHEDULERS,)}
_RESUME_FREE_FIELDS = ("logging_steps", "save_steps")  # they do not change what a run computes


@dataclass
class RecoveryConfig:
    """Recovery settings.

    Args:
        method: `"lora"` (adapters on the projections, merged back) or `"full"` (every weight; small models).
        objective: `"lm"` (next-token loss on the data) or `"distillation"` (KL to a teacher's next-token
            distributions, mixed with the LM loss by `distillation_weight`; needs `recover(..., teacher=)`).
        temperature: distillation temperature `T`; the KL term is `T² · KL(teacher_T ‖ student_T)`.
        distillation_weight: `w` in `w · T² · KL + (1 - w) · LM` (1: distillation only).
        rank: LoRA rank `r`.
        alpha: LoRA scaling numerator (`alpha / rank` scales the update).
        dropout: dropout on the LoRA branch input.
        target_modules: names of the linear layers that get adapters (peft suffix match). `None`: every projection of
            the model family's mapping table (`q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj` for
            Llama, Mistral, Qwen2).
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay (Trainer's: not on biases and norms).
        lr_scheduler: `"constant"`, `"linear"` (decay to 0) or `"cosine"`, after `warmup_steps` (Trainer's schedulers).
        warmup_steps: optimizer steps of linear warmup from 0.
        max_steps: optimizer steps (the data is cycled, reshuffled every pass).
        batch_size: sequences per forward/backward pass.
        gradient_accumulation_steps: passes per optimizer step (the loss is averaged over all their tokens).
        sequence_length: tokens per training sequence (text is packed into windows of this length; instruction
            examples are truncated to it).
        max_grad_norm: gradient clipping norm (0 disables clipping).
        data_format: `"text"` (causal LM on every token), `"instruction"` (loss on the responses only) or `"auto"`
            (instruction when the records have `messages`, `instruction`/`output` or `prompt`/`completion|response`
            fields, text otherwise).
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30% slower).
        logging_steps: log the loss every this many optimizer steps.
        save_steps: write a resumable checkpoint every this many optimizer steps (needs `output_dir`).
        seed: seed of the data order, LoRA initialisation and dropout.
    """

    method: str = "lora"
    objective: str = "lm"
    temperature: float = 1.0
    distillation_weight: float = 1.0
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    max_steps: int = 100
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    sequence_length: int = 256
    max_grad_norm: float = 1.0
    data_format: str = "auto"
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target_modules is not None:
            targets = self.target_modules
            self.target_modules = (targets,) if isinstance(targets, str) else tuple(targets)
        self.validate()

    def validate(self) -> None:
        """Raise a `ValueError` saying what to change for any field that is out of range."""
        for name, minimum in _MINIMA.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}.")
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}.")
        for name, (rule, check) in _RANGES.items():
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or not check(value):
                raise ValueError(f"{name} must be {rule}, got {value!r}.")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}.")
        targets = self.target_modules
        if targets is not None and not (targets and all(isinstance(m, str) and m for m in targets)):
            raise ValueError(
                f"target_modules must be a non-empty list of module names (e.g. ['q_proj', 'v_proj']) or None, "
                f"got {targets!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        targets = self.target_modules
        return {**dataclasses.asdict(self), "target_modules": list(targets) if targets is not None else None}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RecoveryConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown RecoveryConfig fields {unknown}; known fields: {sorted(known)}.")
        return cls(**values)


@dataclass
class RecoveryLog:
    """What a recovery run did; written to `recovery_log.json` and attached to the model as `hywia_recovery_log`."""

    config: dict[str, Any]
    target_modules: list[str]
    trainable_parameters: int
    num_examples: int
    data_format: str
    steps: int
    losses: list[float]
    resumed_from_step: int
    seconds: float
    teacher: str | None = None

    @property
    def initial_loss(self) -> float | None:
        window = self.losses[: max(1, min(10, len(self.losses) // 10))]
        return sum(window) / len(window) if window else None

    @property
    def final_loss(self) -> float | None:
        window = self.losses[-max(1, min(10, len(self.losses) // 10)) :]
        return sum(window) / len(window) if window else None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "initial_loss": self.initial_loss, "final_loss": self.final_loss}


def default_target_modules(model: PreTrainedModel) -> tuple[str, ...]:
    """The projection names (leaf module names) of the model family's mapping table."""
    spec = get_architecture(model.config)
    return tuple(dict.fromkeys(projection.path.rsplit(".", 1)[-1] for projection in (*spec.attention, *spec.mlp)))


def recover(
    model: PreTrainedModel,
    tokenizer: Any,
    data: Any,
    config: RecoveryConfig | None = None,
    output_dir: str | os.PathLike | None = None,
    teacher: PreTrainedModel | None = None,
    *,
    show_progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
) -> PreTrainedModel:
    """Fine-tune `model` on `data` (LoRA merged back into its weights, or all weights) and return it (same object,
    without adapters, its `hywia_recovery_log` set).

    Args:
        tokenizer: tokenizes text data (not needed for token ids); its chat template renders `messages` records.
        data: strings; records (dicts with `text`, `messages`, `instruction` [+ `input`] + `output`, or `prompt` +
            `completion`/`response`); a `datasets.Dataset` of such columns; a `.txt`, `.json`, `.jsonl`, `.csv` or
            `.parquet` file; or token ids (`[N, L]` rows or a 1-D stream).
        output_dir: Trainer's folder: checkpoints and `recovery_log.json`; a run with a checkpoint there is resumed.
            `None`: no checkpoints.
        teacher: the dense model, for `objective="distillation"` (same vocabulary); run in eval mode without
            gradients, on the student's device unless it is dispatched with a device map.
        callbacks: more `transformers.TrainerCallback`s for the run (e.g. evaluation at every checkpoint: `on_save`).
    """
    config = config or RecoveryConfig()
    if not isinstance(config, RecoveryConfig):
        raise TypeError(f"config must be a RecoveryConfig, got {type(config).__name__}.")
    teacher = _check_models(model, teacher, config.objective)
    start_time = time.perf_counter()
    examples, data_format = build_examples(data, tokenizer, config)
    target_modules = (config.target_modules or default_target_modules(model)) if config.method == "lora" else ()
    _check_targets(model, target_modules)
    fingerprint = _run_fingerprint(model, examples, config, target_modules, teacher)
    run_dir = Path(output_dir) if output_dir is not None else None
    checkpoint, state = _resume_point(run_dir, fingerprint) if run_dir is not None else (None, None)
    resumed_from = state.global_step if state is not None else 0

    set_seed(config.seed)
    was_training = model.training
    trained = _add_lora(model, config, target_modules) if config.method == "lora" else model
    num_trainable = sum(param.numel() for param in trained.parameters() if param.requires_grad)
    method = f"LoRA r={config.rank} alpha={config.alpha} on {list(target_modules)}" if target_modules else "all weights"
    logger.info(
        f"HyWIA recovery: {method}, {num_trainable:,} trainable parameters, {len(examples)} {data_format} examples, "
        f"{config.max_steps} steps, objective {config.objective}"
    )
    if checkpoint is not None:
        logger.info(f"HyWIA recovery: resuming from step {resumed_from} of {config.max_steps} ({checkpoint})")
    interruption = _Interruption()
    with tempfile.TemporaryDirectory() if run_dir is None else nullcontext(str(run_dir)) as directory:
        trainer = RecoveryTrainer(
            model=trained,
            args=_training_arguments(config, directory, run_dir is not None, execution_device(model)),
            train_dataset=[{"input_ids": ids, "labels": labels} for ids, labels in examples],
            data_collator=Collator(getattr(tokenizer, "pad_token_id", None) or 0),  # any id: padding is masked
            callbacks=[RunFingerprint(fingerprint), interruption, _Progress(config.logging_steps, show_progress)],
            teacher=teacher,
            recovery_config=config,
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log (every step); _Progress shows the loss
        for callback in callbacks:
            trainer.add_callback(callback)
        try:
            with interruption.installed():
                if state is not None and state.global_step >= config.max_steps:  # a finished run: reuse its weights
                    trainer._load_from_checkpoint(checkpoint)
                    trainer.state = state
                else:
                    trainer.train(resume_from_checkpoint=checkpoint)
            if interruption.requested:
                where = "; run again with the same output_dir to resume" if run_dir is not None else ""
                logger.warning(f"HyWIA recovery interrupted at step {trainer.state.global_step}{where}.")
                raise KeyboardInterrupt
        except BaseException:
            _release(trained, config, was_training, merge=False)  # the caller's model, without adapters
            raise
    model = _release(trained, config, was_training, merge=True)
    log = RecoveryLog(
        config=config.to_dict(),
        target_modules=list(target_modules),
        trainable_parameters=num_trainable,
        num_examples=len(examples),
        data_format=data_format,
        steps=trainer.state.global_step,
        losses=[float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry],
        resumed_from_step=resumed_from,
        seconds=time.perf_counter() - start_time,
        teacher=(getattr(teacher, "name_or_path", None) or type(teacher).__name__) if teacher is not None else None,
    )
    model.hywia_recovery_log = log
    if run_dir is not None:
        (run_dir / RECOVERY_LOG_NAME).write_text(json.dumps(log.to_dict(), indent=2) + "\n")
    if log.initial_loss is not None:
        logger.info(f"HyWIA recovery: loss {log.initial_loss:.4f} -> {log.final_loss:.4f} in {log.steps} steps")
    return model


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    num_items: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """`T² · KL(teacher ‖ student)` of the next-token distributions at temperature `T`, over the full vocabulary.

    Summed over the positions that predict a label (`labels[:, 1:] != IGNORE_INDEX`, as the LM loss) and divided by
    their number, or by `num_items` (Trainer's count over all the micro-batches of an accumulated step).
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    student = torch.log_softmax(student_logits[:, :-1][mask].float() / temperature, dim=-1)
    teacher = torch.log_softmax(teacher_logits[:, :-1][mask].float() / temperature, dim=-1)
    kl = torch.nn.functional.kl_div(student, teacher, reduction="sum", log_target=True)
    return kl * temperature**2 / (num_items if num_items is not None else mask.sum().clamp(min=1))


class RecoveryTrainer(Trainer):
    """`Trainer` whose loss is the LM loss, or `w · T² · KL(teacher ‖ student) + (1 - w) · LM` with a teacher."""

    def __init__(self, *args: Any, teacher: PreTrainedModel | None, recovery_config: RecoveryConfig, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.teacher, self.recovery_config = teacher, recovery_config
        if teacher is not None:
            teacher.eval()
            if not getattr(teacher, "hf_device_map", None):
                teacher.to(self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_inputs = {key: inputs[key] for key in ("input_ids", "attention_mask")}
                teacher_logits = self.teacher(**teacher_inputs).logits.to(outputs.logits.device)
            # normalised like the LM loss: over the accumulated step's tokens when Trainer counts them
            items = num_items_in_batch if self.model_accepts_loss_kwargs else None
            config = self.recovery_config
            kl = distillation_loss(outputs.logits, teacher_logits, inputs["labels"], config.temperature, items)
            loss = config.distillation_weight * kl + (1 - config.distillation_weight) * loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Recovery loss became {loss.item()} at step {self.state.global_step + 1}; lower learning_rate or "
                "check the data."
            )
        return (loss, outputs) if return_outputs else loss


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
    from .configuration import CONFIG_NAME
    from .model_card import REPORT_NAME, source_from_card, write_model_card
    from .modeling import MODELING_FILE

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


# ------------------------------------------------------------------------------------------------------- training


def _training_arguments(config: RecoveryConfig, directory: str, save: bool, device: torch.device) -> Any:
    checkpointing = config.gradient_checkpointing  # Trainer's also makes the embeddings' outputs require grads
    return TrainingArguments(
        output_dir=str(directory),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        lr_scheduler_type=LR_SCHEDULERS[config.lr_scheduler],
        warmup_steps=config.warmup_steps,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        logging_steps=1,  # every step's loss goes to the log
        disable_tqdm=True,  # _Progress is the progress bar
        save_strategy="steps" if save else "no",
        save_steps=config.save_steps,
        save_total_limit=1,
        seed=config.seed,
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        use_cpu=device.type == "cpu",
        label_names=["labels"],
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        report_to="none",
    )


def _add_lora(model: PreTrainedModel, config: RecoveryConfig, target_modules: Sequence[str]) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft still calls transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)


def _release(trained: Any, config: RecoveryConfig, was_training: bool, merge: bool) -> PreTrainedModel:
    """The model without adapters (merged into its weights when `merge`) or checkpointing, in its former mode."""
    model = (trained.merge_and_unload() if merge else trained.unload()) if config.method == "lora" else trained
    if config.gradient_checkpointing:
        model.activation_checkpointing_disable()
    return model.train(was_training)


class RunFingerprint(TrainerCallback, ExportableState):
    """Hashes of what decides a run's result, stored by Trainer in every checkpoint's `trainer_state.json`."""

    def __init__(self, fingerprint: dict[str, str]):
        self.fingerprint = fingerprint

    def state(self) -> dict[str, Any]:
        return {"args": {"fingerprint": self.fingerprint}, "attributes": {}}


class _Progress(ProgressCallback):
    """Trainer's progress bar (when `show`) with the loss as its postfix, and a log line every `logging_steps`."""

    def __init__(self, logging_steps: int, show: bool):
        super().__init__()
        self.logging_steps, self.show = logging_steps, show

    def on_train_begin(self, args, state, control, **kwargs):
        self.current_step = state.global_step
        self.training_bar = tqdm(
            total=state.max_steps, initial=self.current_step, desc="Recovery", disable=not self.show
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if state.global_step % self.logging_steps == 0 or state.global_step == state.max_steps:
                step, lr = f"{state.global_step}/{state.max_steps}", logs.get("learning_rate", 0.0)
                logger.info(f"HyWIA recovery: step {step} loss {logs['loss']:.4f} lr {lr:.2e}")


class _Interruption(TrainerCallback):
    """Ctrl-C during training ends the current optimizer step, saves a checkpoint and stops; a second one stops at
    once. Only where SIGINT has Python's default handler (not in a background job that ignores it) and the main
    thread trains."""

    requested = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        main = threading.current_thread() is threading.main_thread()
        install = main and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        if install:
            signal.signal(signal.SIGINT, self._handle)
        try:
            yield
        finally:
            if install:
                signal.signal(signal.SIGINT, signal.default_int_handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("HyWIA recovery: interrupted; stopping after this step (Ctrl-C again to stop at once).")

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"


def _check_models(model: Any, teacher: Any, objective: str) -> PreTrainedModel | None:
    """Both must be causal LMs with one vocabulary; returns the teacher where the objective uses one, else `None`."""
    checked = {"model": model} if teacher is None else {"model": model, "teacher": teacher}
    for what, candidate in checked.items():
        if not isinstance(candidate, PreTrainedModel):
            raise TypeError(f"{what} must be a transformers PreTrainedModel, got {type(candidate).__name__}.")
        auto_map = getattr(candidate.config, "auto_map", None)
        if auto_class_for(type(candidate).__name__, auto_map, "AutoModelForCausalLM") not in GENERATIVE_AUTO_CLASSES:
            raise ValueError(
                f"Recovery trains causal language models (…ForCausalLM); got {type(candidate).__name__} as {what}. "
                "Load the checkpoint with AutoModelForCausalLM or optimum_hywia.load_pruned_model."
            )
    if objective == "lm":
        if teacher is not None:
            logger.warning("HyWIA recovery: teacher is ignored with objective='lm'; pass objective='distillation'.")
        return None
    if teacher is None:
        raise ValueError(
            "objective='distillation' needs the dense model as teacher: pass teacher= to recover() "
            "(hywia recover: --teacher)."
        )
    sizes = [m.get_output_embeddings().weight.shape[0] for m in (model, teacher)]
    if sizes[0] != sizes[1]:
        raise ValueError(f"The teacher's vocabulary ({sizes[1]} tokens) differs from the model's ({sizes[0]}).")
    return teacher


def _check_targets(model: PreTrainedModel, target_modules: Sequence[str]) -> None:
    """Every target names a weight-bearing layer (nn.Linear, or GPT-2's Conv1D) of the model."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(getattr(module, "weight", None), torch.nn.Parameter)
        and module.weight.ndim == 2
        and not isinstance(module, torch.nn.Embedding)
    }
    missing = [name for name in target_modules if name not in names]
    if missing:
        raise ValueError(
            f"target_modules {missing} name no linear layer of this model; its linear layers are {sorted(names)}."
        )


# ---------------------------------------------------------------------------------------------------- checkpoints


def _run_fingerprint(model, examples, config, target_modules, teacher) -> dict[str, str]:
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
    settings = {k: v for k, v in config.to_dict().items() if k not in _RESUME_FREE_FIELDS}
    settings = json.dumps({**settings, "target_modules": list(target_modules)}, sort_keys=True)
    result = dict(zip(("model_shapes", "model_weights"), weights(model)))
    result.update(data=data.hexdigest(), config=hashlib.sha256(settings.encode()).hexdigest())
    if teacher is not None:
        result["teacher"] = hashlib.sha256("".join(weights(teacher)).encode()).hexdigest()
    return result


def _resume_point(run_dir: Path, fingerprint: dict[str, str]) -> tuple[str | None, TrainerState | None]:
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


__all__ = [
    "RecoveryConfig",
    "RecoveryLog",
    "RecoveryTrainer",
    "build_examples",
    "default_target_modules",
    "distillation_loss",
    "load_records",
    "recover",
    "save_recovered_model",
]
