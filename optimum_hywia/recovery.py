"""LoRA recovery: a short fine-tuning of a pruned model with peft, merged back so the result is a plain model.

```python
from optimum_hywia.recovery import RecoveryConfig, recover

model = recover(pruned_model, tokenizer, texts, RecoveryConfig(max_steps=200), output_dir="recovery-run")
```

Works on uniform and per-layer pruned models alike (LoRA wraps each linear layer at whatever width it has). With an
`output_dir`, a checkpoint (adapter weights, optimizer state, RNG state; safetensors + JSON) is written every
`save_steps` steps and on interruption; calling `recover` again with the same model, data, config and `output_dir`
resumes from it and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.utils import logging

from .architectures import GENERATIVE_AUTO_CLASSES, auto_class_for
from .data.inputs import normalize_inputs
from .model_card import RECOVERY_LOG_NAME
from .offload import execution_device
from .saving import atomic_directory, check_destination

logger = logging.get_logger(__name__)

CHECKPOINT_DIR = "checkpoint"
DATA_FORMATS = ("auto", "text", "instruction")
LR_SCHEDULERS = ("constant", "linear", "cosine")
IGNORE_INDEX = -100
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
# fields that do not change what a run computes, so a resumed run may change them
_RESUME_FREE_FIELDS = ("logging_steps", "save_steps")


@dataclass
class RecoveryConfig:
    """LoRA recovery settings.

    Args:
        rank: LoRA rank `r`.
        alpha: LoRA scaling numerator (`alpha / rank` scales the update).
        dropout: dropout on the LoRA branch input.
        target_modules: names of the linear layers that get adapters (peft suffix match). `None`: every projection of
            the model family's mapping table (`q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj` for
            Llama, Mistral, Qwen2).
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay of the adapter weights.
        lr_scheduler: `"constant"`, `"linear"` (decay to 0) or `"cosine"`, after `warmup_steps` of linear warmup.
        warmup_steps: optimizer steps of linear warmup from 0.
        max_steps: optimizer steps (the data is cycled, reshuffled every pass).
        batch_size: sequences per forward/backward pass.
        gradient_accumulation_steps: passes per optimizer step.
        sequence_length: tokens per training sequence (text is packed into windows of this length; instruction
            examples are truncated to it).
        max_grad_norm: gradient clipping norm (0 disables clipping).
        data_format: `"text"` (causal LM on every token), `"instruction"` (loss on the responses only) or `"auto"`
            (instruction when the records have `messages`, `instruction`/`output` or `prompt`/`completion|response`
            fields, text otherwise).
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30% slower).
        logging_steps: log the mean loss every this many optimizer steps.
        save_steps: write a resumable checkpoint every this many optimizer steps (needs `output_dir`).
        seed: seed of the data order, LoRA initialisation and dropout.
    """

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
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)
        self.validate()

    def validate(self) -> None:
        """Raise a `ValueError` saying what to change for any field that is out of range."""
        for name in (
            "rank",
            "max_steps",
            "batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "save_steps",
        ):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("warmup_steps", self.warmup_steps, minimum=0)
        _check_int("seed", self.seed, minimum=None)
        _check_int("sequence_length", self.sequence_length, minimum=2)
        for name in ("alpha", "learning_rate"):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a number > 0, got {getattr(self, name)!r}.")
        for name in ("weight_decay", "max_grad_norm"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}.")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")
        if self.data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {list(DATA_FORMATS)}, got {self.data_format!r}.")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {list(LR_SCHEDULERS)}, got {self.lr_scheduler!r}.")
        if self.target_modules is not None and (
            not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules)
        ):
            raise ValueError(
                f"target_modules must be a non-empty list of module names (e.g. ['q_proj', 'v_proj']) or None, "
                f"got {self.target_modules!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        result = dataclasses.asdict(self)
        if result["target_modules"] is not None:
            result["target_modules"] = list(result["target_modules"])
        return result

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

    @property
    def initial_loss(self) -> float | None:
        window = self.losses[: max(1, min(10, len(self.losses) // 10))]
        return sum(window) / len(window) if window else None

    @property
    def final_loss(self) -> float | None:
        window = self.losses[-max(1, min(10, len(self.losses) // 10)) :]
        return sum(window) / len(window) if window else None

    def to_dict(self) -> dict[str, Any]:
        result = dataclasses.asdict(self)
        result["initial_loss"] = self.initial_loss
        result["final_loss"] = self.final_loss
        return result


def default_target_modules(model: PreTrainedModel) -> tuple[str, ...]:
    """The projection names (leaf module names) of the model family's mapping table."""
    from .architectures import get_architecture

    spec = get_architecture(model.config)
    names = [projection.path.rsplit(".", 1)[-1] for projection in (*spec.attention, *spec.mlp)]
    return tuple(dict.fromkeys(names))


def recover(
    model: PreTrainedModel,
    tokenizer: Any,
    data: Any,
    config: RecoveryConfig | None = None,
    output_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
) -> PreTrainedModel:
    """Fine-tune `model` with LoRA adapters on `data`, merge them into its weights and return it (same object).

    Args:
        model: a (pruned) causal LM; its weights are updated in place and the returned model has no adapters.
        tokenizer: tokenizes text data (not needed for token ids).
        data: a list of strings; a list of records (dicts with `text`, or `messages`, or `instruction`
            [+ `input`] + `output`, or `prompt` + `completion`/`response`); a `datasets.Dataset` of such columns; a
            `.txt`, `.json`, `.jsonl`, `.csv` or `.parquet` file; or token ids (`[N, L]` rows or a 1-D stream).
        config: a `RecoveryConfig` (defaults when `None`).
        output_dir: where checkpoints and `recovery_log.json` go; a run with a checkpoint there is resumed. `None`:
            no checkpoints.
        show_progress: show a tqdm progress bar with the running loss.
    """
    config = config or RecoveryConfig()
    if not isinstance(config, RecoveryConfig):
        raise TypeError(f"config must be a RecoveryConfig, got {type(config).__name__}.")
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}.")
    auto_class = auto_class_for(type(model).__name__, getattr(model.config, "auto_map", None), "AutoModelForCausalLM")
    if auto_class not in GENERATIVE_AUTO_CLASSES:
        raise ValueError(
            f"LoRA recovery trains causal language models (…ForCausalLM); got {type(model).__name__}. Load the "
            "checkpoint with AutoModelForCausalLM or optimum_hywia.load_pruned_model."
        )
    from peft import LoraConfig, get_peft_model

    start_time = time.perf_counter()
    examples, data_format = build_examples(data, tokenizer, config)
    target_modules = config.target_modules or default_target_modules(model)
    _check_targets(model, target_modules)
    device = execution_device(model)
    pad_id = _pad_id(tokenizer, model)
    fingerprint = _run_fingerprint(model, examples, config, target_modules)

    checkpoint = Path(output_dir) / CHECKPOINT_DIR if output_dir is not None else None
    state = _read_checkpoint_state(checkpoint, fingerprint, config) if checkpoint else None

    torch.manual_seed(config.seed)
    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    was_training = model.training
    with warnings.catch_warnings():  # peft still calls transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, lora_config)
    trainable = {name: param for name, param in peft_model.named_parameters() if param.requires_grad}
    num_trainable = sum(param.numel() for param in trainable.values())
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.learning_rate, weight_decay=config.weight_decay)
    losses: list[float] = []
    step = 0
    if state is not None:
        step, losses = _load_checkpoint(checkpoint, state, trainable, optimizer)
        logger.info(f"HyWIA recovery: resuming from step {step} of {config.max_steps} ({checkpoint})")
    resumed_from = step
    if config.gradient_checkpointing:
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.enable_input_require_grads()

    logger.info(
        f"HyWIA recovery: LoRA r={config.rank} alpha={config.alpha} on {list(target_modules)}, "
        f"{num_trainable:,} trainable parameters, {len(examples)} {data_format} examples, {config.max_steps} steps"
    )
    peft_model.train()
    progress = tqdm(total=config.max_steps, initial=step, desc="LoRA recovery", unit="step", disable=not show_progress)
    try:
        while step < config.max_steps:
            loss = _train_step(peft_model, optimizer, examples, step, config, pad_id, device, trainable)
            step += 1
            losses.append(loss)
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}")
            if step % config.logging_steps == 0 or step == config.max_steps:
                recent = losses[-config.logging_steps :]
                logger.info(
                    f"HyWIA recovery: step {step}/{config.max_steps} loss {sum(recent) / len(recent):.4f} "
                    f"lr {_learning_rate(step - 1, config):.2e}"
                )
            if checkpoint is not None and (step % config.save_steps == 0 or step == config.max_steps):
                _write_checkpoint(checkpoint, fingerprint, config, step, losses, trainable, optimizer)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt) and checkpoint is not None and step > resumed_from:
            _write_checkpoint(checkpoint, fingerprint, config, step, losses, trainable, optimizer)
            logger.warning(f"HyWIA recovery interrupted at step {step}; run again with the same output_dir to resume.")
        peft_model.unload()  # give the caller back its model without adapters
        raise
    finally:
        progress.close()

    if config.gradient_checkpointing:
        peft_model.gradient_checkpointing_disable()
    merged = peft_model.merge_and_unload()
    merged.train(was_training)
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        if attribute in vars(merged):
            delattr(merged, attribute)
    log = RecoveryLog(
        config=config.to_dict(),
        target_modules=list(target_modules),
        trainable_parameters=num_trainable,
        num_examples=len(examples),
        data_format=data_format,
        steps=step,
        losses=losses,
        resumed_from_step=resumed_from,
        seconds=time.perf_counter() - start_time,
    )
    merged.hywia_recovery_log = log
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / RECOVERY_LOG_NAME).write_text(json.dumps(log.to_dict(), indent=2) + "\n")
    if log.initial_loss is not None:
        logger.info(f"HyWIA recovery: loss {log.initial_loss:.4f} -> {log.final_loss:.4f} in {step} steps")
    return merged


def save_recovered_model(
    model: PreTrainedModel,
    tokenizer: Any,
    pruned_checkpoint: str | os.PathLike,
    save_directory: str | os.PathLike,
    overwrite: bool = False,
) -> Path:
    """Save a recovered model as a HyWIA checkpoint like the one it came from, with an updated model card.

    The pruning files of `pruned_checkpoint` (`hywia_config.json`, `hywia_report.json`, and `modeling_hywia.py` for
    per-layer layouts) are carried over, the recovery log is added, and the card keeps the base model and licence.
    Its evaluation results are not carried over: they describe the model before recovery. The folder is written
    next to its destination and moved into place at the end; an existing non-empty one is replaced only with
    `overwrite=True`.
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


# ----------------------------------------------------------------------------------------------------------- data


Example = tuple[torch.Tensor, torch.Tensor]  # input_ids, labels (IGNORE_INDEX where no loss)


def build_examples(data: Any, tokenizer: Any, config: RecoveryConfig) -> tuple[list[Example], str]:
    """Training examples `(input_ids, labels)` and the data format used (`"text"` or `"instruction"`)."""
    records = load_records(data)
    if records and all(isinstance(record, torch.Tensor) for record in records):
        if config.data_format == "instruction":
            raise ValueError("data_format='instruction' needs records with prompts and responses, not token ids.")
        return _pack(records, config.sequence_length), "text"
    if not records:
        raise ValueError("The recovery data is empty: pass some text, records or token ids.")
    if tokenizer is None:
        raise ValueError("Text recovery data needs a tokenizer: pass tokenizer= (or token ids instead of text).")
    data_format = config.data_format
    if data_format == "auto":
        data_format = "instruction" if _instruction_kind(records[0]) else "text"
    if data_format == "text":
        texts = [_record_text(record) for record in records]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        stream = torch.tensor([token for ids in encoded for token in [*ids, *eos]], dtype=torch.long)
        return _pack([stream], config.sequence_length), "text"
    examples = [_instruction_example(record, tokenizer, config.sequence_length) for record in records]
    examples = [example for example in examples if (example[1] != IGNORE_INDEX).any()]
    if not examples:
        raise ValueError(
            f"No instruction example keeps a response within sequence_length={config.sequence_length} tokens: "
            "raise sequence_length."
        )
    return examples, "instruction"


def load_records(data: Any) -> list[Any] | list[torch.Tensor]:
    """Strings or dicts (records), or 1-D token-id tensors, from any data `recover` accepts (the shared
    `optimum_hywia.data.inputs.normalize_inputs`; a dataset with instruction fields gives its rows as records)."""
    return normalize_inputs(data, "recovery data", records=True, is_record=_instruction_kind)


def _instruction_kind(record: Any) -> str | None:
    if not isinstance(record, Mapping):
        return None
    if "messages" in record:
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and ("completion" in record or "response" in record):
        return "prompt"
    return None


def _record_text(record: Any) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, Mapping) and isinstance(record.get("text"), str):
        return record["text"]
    raise ValueError(
        f"A text-format recovery record must be a string or have a 'text' field, got {_describe(record)}; "
        "for instruction data use messages, instruction/output or prompt/completion fields."
    )


def _instruction_example(record: Any, tokenizer: Any, sequence_length: int) -> Example:
    """Prompt and response token ids, with the loss on the response (and its EOS) only."""
    kind = _instruction_kind(record)
    chat_template = getattr(tokenizer, "chat_template", None)
    if kind == "messages":
        messages = list(record["messages"])
        if not messages or not isinstance(messages[-1], Mapping) or messages[-1].get("role") != "assistant":
            raise ValueError("Each 'messages' record must end with an assistant message (the response to learn).")
        prompt_messages, response = messages[:-1], messages[-1]["content"]
    elif kind == "alpaca":
        user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        prompt_messages, response = [{"role": "user", "content": user}], record["output"]
    elif kind == "prompt":
        prompt, response = record["prompt"], record.get("completion", record.get("response"))
        prompt_messages = None
    else:
        raise ValueError(
            f"An instruction-format recovery record needs 'messages', 'instruction' + 'output', or 'prompt' + "
            f"'completion'/'response' fields, got {_describe(record)}."
        )
    if prompt_messages is not None:
        if chat_template:
            prompt = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
        elif kind == "alpaca":
            template = ALPACA_PROMPT_WITH_INPUT if record.get("input") else ALPACA_PROMPT
            prompt = template.format(instruction=record["instruction"], input=record.get("input", ""))
        else:
            prompt = "".join(f"{m['role']}: {m['content']}\n" for m in prompt_messages) + "assistant: "
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError(f"Instruction prompts and responses must be strings, got {_describe(record)}.")
    prompt_ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False, verbose=False)["input_ids"]
    if tokenizer.eos_token_id is not None and (not response_ids or response_ids[-1] != tokenizer.eos_token_id):
        response_ids = [*response_ids, tokenizer.eos_token_id]
    input_ids = torch.tensor([*prompt_ids, *response_ids], dtype=torch.long)[:sequence_length]
    labels = torch.tensor([IGNORE_INDEX] * len(prompt_ids) + response_ids, dtype=torch.long)[:sequence_length]
    return input_ids, labels


def _pack(streams: list[torch.Tensor], sequence_length: int) -> list[Example]:
    """Consecutive `sequence_length` windows of each stream; a stream shorter than one window is used whole."""
    examples = []
    for stream in streams:
        if len(stream) < sequence_length:
            if len(stream) >= 2:
                examples.append((stream, stream))
            continue
        for window in stream[: len(stream) // sequence_length * sequence_length].reshape(-1, sequence_length):
            examples.append((window, window))
    if not examples:
        raise ValueError("The recovery data yields no sequence of at least 2 tokens: pass more text or token ids.")
    return examples


def _describe(record: Any) -> str:
    if isinstance(record, Mapping):
        return f"a record with fields {sorted(record)}"
    return f"a {type(record).__name__}"


# ------------------------------------------------------------------------------------------------------- training


def _batch_indices(step: int, micro: int, num_examples: int, config: RecoveryConfig) -> list[int]:
    """Example indices of one micro-batch: passes over the data in a seeded order, reshuffled every pass."""
    first = (step * config.gradient_accumulation_steps + micro) * config.batch_size
    indices = []
    for position in range(first, first + config.batch_size):
        epoch, offset = divmod(position, num_examples)
        indices.append(int(_epoch_order(num_examples, config.seed, epoch)[offset]))
    return indices


@functools.lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _collate(examples: list[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (ids, example_labels) in enumerate(examples):
        input_ids[row, : len(ids)] = ids
        labels[row, : len(ids)] = example_labels
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": attention_mask.to(device)}


def _learning_rate(step: int, config: RecoveryConfig) -> float:
    """Learning rate of optimizer step `step` (0-based)."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / (config.warmup_steps + 1)
    if config.lr_scheduler == "constant":
        return config.learning_rate
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    if config.lr_scheduler == "linear":
        return config.learning_rate * (1.0 - progress)
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def _train_step(model, optimizer, examples, step, config, pad_id, device, trainable) -> float:
    for group in optimizer.param_groups:
        group["lr"] = _learning_rate(step, config)
    micro_batches = [
        _collate([examples[i] for i in _batch_indices(step, micro, len(examples), config)], pad_id, device)
        for micro in range(config.gradient_accumulation_steps)
    ]
    # weight every micro-batch by its number of predicted tokens, so accumulation equals one large batch
    counts = [int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) for batch in micro_batches]
    total = max(1, sum(counts))
    loss_sum = 0.0
    for batch, count in zip(micro_batches, counts):
        if count == 0:
            continue
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"LoRA recovery loss became {loss.item()} at step {step + 1}; lower learning_rate or check the data."
            )
        (loss * count / total).backward()
        loss_sum += loss.item() * count
    if config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(list(trainable.values()), config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / total


def _pad_id(tokenizer: Any, model: PreTrainedModel) -> int:
    for candidate in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
        getattr(model.config, "pad_token_id", None),
        getattr(model.config, "eos_token_id", None),
    ):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if isinstance(candidate, int):
            return candidate
    return 0


def _check_targets(model: PreTrainedModel, target_modules: Sequence[str]) -> None:
    """Every target names a weight-bearing layer (nn.Linear, or GPT-2's Conv1D) of the model."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name
        and isinstance(getattr(module, "weight", None), torch.nn.Parameter)
        and module.weight.ndim == 2
        and not isinstance(module, torch.nn.Embedding)
    }
    missing = [name for name in target_modules if name not in names]
    if missing:
        raise ValueError(
            f"target_modules {missing} name no linear layer of this model; its linear layers are {sorted(names)}."
        )


# ---------------------------------------------------------------------------------------------------- checkpoints


def _run_fingerprint(model, examples, config, target_modules) -> dict[str, str]:
    """Hashes of what decides a run's result: model shapes and weights, data, and settings."""
    shapes = hashlib.sha256()
    weights = hashlib.sha256()
    for name, param in model.named_parameters():
        shapes.update(f"{name}:{tuple(param.shape)}:{param.dtype};".encode())
        flat = param.detach().flatten()
        weights.update(flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy().tobytes())
    data = hashlib.sha256()
    for ids, labels in examples:
        data.update(ids.numpy().tobytes())
        data.update(labels.numpy().tobytes())
    settings = {k: v for k, v in config.to_dict().items() if k not in _RESUME_FREE_FIELDS}
    settings["target_modules"] = list(target_modules)
    return {
        "model_shapes": shapes.hexdigest(),
        "model_weights": weights.hexdigest(),
        "data": data.hexdigest(),
        "config": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
    }


def _read_checkpoint_state(checkpoint: Path, fingerprint: dict[str, str], config: RecoveryConfig) -> dict | None:
    state_file = checkpoint / "trainer_state.json"
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    changed = [key for key, value in fingerprint.items() if state.get("fingerprint", {}).get(key) != value]
    if changed:
        raise ValueError(
            f"{checkpoint} holds a recovery checkpoint of a different run (changed: {', '.join(changed)}); pass "
            f"another output_dir, or delete {checkpoint} to start over."
        )
    return state


def _write_checkpoint(checkpoint, fingerprint, config, step, losses, trainable, optimizer) -> None:
    from safetensors.torch import save_file

    with atomic_directory(checkpoint, durable=False) as staging:
        save_file(
            {name: param.detach().contiguous() for name, param in trainable.items()}, staging / "adapter.safetensors"
        )
        optimizer_state = optimizer.state_dict()
        tensors = {"rng.torch": torch.get_rng_state()}
        scalars = {}
        for index, values in optimizer_state["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"state.{index}.{key}"] = value.detach().contiguous()
                else:
                    scalars[f"{index}.{key}"] = value
        save_file(tensors, staging / "optimizer.safetensors")
        state = {
            "step": step,
            "losses": losses,
            "fingerprint": fingerprint,
            "config": config.to_dict(),
            "param_groups": optimizer_state["param_groups"],
            "optimizer_scalars": scalars,
        }
        (staging / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")


def _load_checkpoint(checkpoint, state, trainable, optimizer) -> tuple[int, list[float]]:
    from safetensors.torch import load_file

    adapters = load_file(checkpoint / "adapter.safetensors")
    if set(adapters) != set(trainable):
        raise ValueError(f"{checkpoint}: adapter weights do not match this model's LoRA layers; delete it to restart.")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(adapters[name])
    tensors = load_file(checkpoint / "optimizer.safetensors")
    optimizer_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    for key, value in state["optimizer_scalars"].items():
        index, name = key.split(".", 1)
        optimizer_state.setdefault(int(index), {})[name] = value
    param_groups = []
    for group in state["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        param_groups.append(group)
    optimizer.load_state_dict({"state": optimizer_state, "param_groups": param_groups})
    torch.set_rng_state(tensors["rng.torch"])
    return int(state["step"]), [float(loss) for loss in state["losses"]]


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = [
    "RecoveryConfig",
    "RecoveryLog",
    "build_examples",
    "default_target_modules",
    "load_records",
    "recover",
    "save_recovered_model",
]
