"""`recover`: the training run on `transformers.Trainer`, with LoRA (peft, merged back) or all weights, on the LM
loss or by distillation from the dense model."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import logging

from ..architectures import GENERATIVE_AUTO_CLASSES, auto_class_for
from ..data.training import IGNORE_INDEX, Collator, build_examples
from ..model_card import RECOVERY_LOG_NAME
from ..offload import execution_device
from .checkpoints import RunFingerprint, resume_point, run_fingerprint
from .configuration import LR_SCHEDULERS, RecoveryConfig, RecoveryLog, default_target_modules

logger = logging.get_logger(__name__)


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
    fingerprint = run_fingerprint(model, examples, config, target_modules, teacher)
    run_dir = Path(output_dir) if output_dir is not None else None
    checkpoint, state = resume_point(run_dir, fingerprint) if run_dir is not None else (None, None)
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
