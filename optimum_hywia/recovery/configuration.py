"""`RecoveryConfig`, the settings of a recovery run, and `RecoveryLog`, what it did."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel

from ..architectures import get_architecture
from ..data.training import DATA_FORMATS

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
