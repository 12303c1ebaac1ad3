"""Per-group gradient statistics, folded in the moment each gradient is ready.

A post-accumulate-grad hook on every prunable weight turns `s = w * dL/dw` into three sums per row (or column) of
the sliced dimension and frees the gradient, so no full-size gradient or Fisher accumulator is ever held:

- `signed`: sum of `s` (linear in the gradient, so exact across calibration batches),
- `absolute`: sum of `|s|`,
- `squared`: sum of `s**2` (the Fisher-diagonal term `w F w` of the second-order estimate).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.utils import logging

from ..groups import GroupSet
from ..offload import execution_device, post_accumulate_grad_hooks
from .masking import masks_suspended

logger = logging.get_logger(__name__)


@dataclass
class IndexStatistics:
    """Sums over the rows/columns of one projection, accumulated over calibration batches."""

    signed: torch.Tensor
    absolute: torch.Tensor
    squared: torch.Tensor


class GradientStatistics:
    """Collect `IndexStatistics` for every projection of `group_sets` during backward passes.

    With `output_fisher`, also the output Fisher of each set's projection sliced along its input, `F = Σ_t g_t g_tᵀ`
    over calibration tokens `t` (`g_t`: the loss gradient at that projection's output; float32, `[out, out]` per
    set, in `self.output_fisher`): how much the loss cares about each direction of the output a refit changes
    (`HyWIAConfig.reconstruction_reselect`).
    """

    def __init__(self, group_sets: list[GroupSet], output_fisher: bool = False):
        self.group_sets = group_sets
        self.stats: dict[tuple[int, str], list[IndexStatistics]] = {}
        self.output_fisher: dict[tuple[int, str], torch.Tensor] = {}
        self._fisher_wanted = output_fisher
        self.num_batches = 0
        for group_set in group_sets:
            self.stats[group_set.key] = [
                IndexStatistics(*(torch.zeros(p.size, dtype=torch.float64) for _ in range(3)))
                for p in group_set.projections
            ]

    def _fisher_hooks(self) -> list:
        """Forward hooks that fold the gradient at each input-sliced projection's output into `output_fisher`.
        Only outputs on the backward path count: a checkpoint's recomputation (no gradient reaches its outputs,
        or no gradient is recorded) adds nothing, so the sums are the same with and without checkpointing."""

        def forward_hook(key):
            def hook(module, args, output):
                if torch.is_grad_enabled() and output.requires_grad:
                    output.register_hook(lambda grad: self._add_fisher(key, grad))

            return hook

        handles = []
        for group_set in self.group_sets:
            for projection in group_set.projections:
                if projection.spec.dim == "in":
                    handles.append(projection.module.register_forward_hook(forward_hook(group_set.key)))
        return handles

    def _add_fisher(self, key: tuple[int, str], grad: torch.Tensor) -> None:
        rows = grad.detach().reshape(-1, grad.shape[-1]).float()
        product = (rows.T @ rows).cpu()
        if key in self.output_fisher:
            self.output_fisher[key] += product
        else:
            self.output_fisher[key] = product

    def _hook(self, stats: IndexStatistics, reduce_dim: int):
        def fold(param: torch.Tensor) -> None:
            salience = (param.detach() * param.grad).float()
            if salience.ndim == 1:  # bias of a row-sliced projection
                salience = salience[:, None]
            stats.signed += salience.sum(reduce_dim).double().cpu()
            stats.absolute += salience.abs().sum(reduce_dim).double().cpu()
            stats.squared += salience.square().sum(reduce_dim).double().cpu()
            param.grad = None

        return fold

    def collect(self, model: torch.nn.Module, batches: Iterable[torch.Tensor], show_progress: bool = True) -> None:
        """Run forward/backward passes of the causal-LM loss over `batches` and fold the gradients."""
        tracked: dict[int, tuple[torch.nn.Parameter, object]] = {}
        for group_set in self.group_sets:
            for projection, stats in zip(group_set.projections, self.stats[group_set.key]):
                reduce_dim = 1 - projection.weight_axis  # Conv1D weights are [in, out]
                weight, bias = projection.module.weight, projection.module.bias
                tracked[id(weight)] = (weight, self._hook(stats, reduce_dim))
                if projection.spec.dim == "out" and bias is not None:
                    tracked[id(bias)] = (bias, self._hook(stats, 1))
        previous = [(param, param.requires_grad) for param in model.parameters()]
        fisher_handles: list = []
        if _encoder(model) is not None:  # encoder targets are the embeddings of this (dense) model
            vars(_encoder(model)).pop(_DENSE_TARGETS, None)
        try:
            for param in model.parameters():
                param.requires_grad_(id(param) in tracked)
            device = execution_device(model)
            batches = list(batches)
            fisher_handles = self._fisher_hooks() if self._fisher_wanted else []
            with post_accumulate_grad_hooks(model, list(tracked.values())):
                for batch in tqdm(batches, desc="HyWIA calibration (gradients)", disable=not show_progress):
                    batch = batch.to(device)
                    loss = calibration_loss(model, batch)
                    check_finite(loss, "calibration loss")
                    loss.backward()
                    self.num_batches += 1
        finally:
            for handle in fisher_handles:
                handle.remove()
            for param, requires_grad in previous:
                param.requires_grad_(requires_grad)
                param.grad = None
        for key, per_projection in self.stats.items():
            for stats in per_projection:
                check_finite(stats.absolute, f"gradient statistics of layer {key[0]} ({key[1]})")


def check_finite(value: torch.Tensor, what: str) -> None:
    if not torch.isfinite(value).all():
        raise FloatingPointError(
            f"The {what} is NaN or infinite. Load the model in float32 (dtype=torch.float32) or bfloat16 "
            "rather than float16, and check the calibration data."
        )


ENCODER_TOKEN_DROP = 0.15
_DENSE_TARGETS = "_hywia_dense_targets"


def _encoder(model: torch.nn.Module) -> torch.nn.Module | None:
    """The encoder-only transformers model behind `model` (itself, or a wrapper's `.model`), else None."""
    inner = model if isinstance(model, PreTrainedModel) else getattr(model, "model", None)
    if isinstance(inner, PreTrainedModel) and not inner.can_generate():
        return inner
    return None


def calibration_loss(model: torch.nn.Module, batch: torch.Tensor, objective: str = "lm") -> torch.Tensor:
    """The calibration objective of a batch.

    Generative models: the causal-LM loss (`objective="lm"`, used for the gradient statistics), or, for the fusion
    training, `objective="distillation"`: the KL divergence from the unmasked model's next-token distributions to
    the (group-masked) model's, see `distillation_loss`. Encoders: masked self-distillation, whatever `objective`.
    `model` is a transformers model or a wrapper with the same `forward(input_ids, labels)` that also takes
    `objective` (`memory.CalibrationModel`, `distributed.RowShardedModel`); an encoder behind a wrapper is called
    directly.
    """
    encoder = _encoder(model)
    if encoder is not None:
        return encoder_distillation_loss(encoder, batch)
    if objective == "lm":
        return model(input_ids=batch, labels=batch, use_cache=False).loss
    if objective != "distillation":
        raise ValueError(f"objective must be 'lm' or 'distillation', got {objective!r}.")
    if isinstance(model, PreTrainedModel):
        return distillation_loss(model, batch)
    return model(input_ids=batch, labels=batch, use_cache=False, objective=objective).loss


class TeacherCache:
    """The unmasked model's next-token log-probabilities per calibration batch, computed once, kept on the CPU.

    Fusion training and the ranking choice compare many masked models with the same dense teacher on the same
    batches. Up to `max_bytes` the cache keeps the teacher's log-probabilities; beyond it, the last hidden states
    (the output head's input, `vocabulary / hidden size` times smaller), so that only the head is re-applied --
    where the family's logits are that head's output (soft-capped logits are not: detected on the first batch, those
    batches keep recomputing the teacher). Either way the values are exactly the uncached ones.
    """

    def __init__(self, max_bytes: int = 0) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.entries: dict[tuple, tuple[str, torch.Tensor]] = {}
        self.exact: dict[int, bool] = {}

    def teacher_log_probs(self, model: PreTrainedModel, batch: torch.Tensor) -> torch.Tensor:
        """`log_softmax` of the unmasked `model`'s logits on `batch` (call with `group_masks` suspended)."""
        device_type = batch.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        key = (id(model), str(dtype), tuple(batch.shape), batch.cpu().numpy().tobytes())
        head = model.get_output_embeddings()
        if key in self.entries:
            kind, value = self.entries[key]
            value = value.to(batch.device)
            return value if kind == "log_probs" else head(value).float().log_softmax(-1)
        captured = []
        handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0])) if head else None
        try:
            log_probs = model(input_ids=batch, use_cache=False).logits.float().log_softmax(-1)
        finally:
            if handle is not None:
                handle.remove()
        if self.used + log_probs.nbytes <= self.max_bytes:
            self.entries[key] = ("log_probs", log_probs.cpu())
            self.used += log_probs.nbytes
        elif head is not None and len(captured) == 1:
            if id(model) not in self.exact:
                self.exact[id(model)] = torch.equal(head(captured[0]).float().log_softmax(-1), log_probs)
            if self.exact[id(model)]:
                self.entries[key] = ("hidden", captured[0].detach().cpu())
        return log_probs


_teacher_cache: list[TeacherCache] = []


@contextmanager
def cached_teacher(max_bytes: int = 0) -> Iterator[TeacherCache]:
    """Within the block, `distillation_loss` computes the dense teacher once per distinct batch (`TeacherCache`)."""
    cache = TeacherCache(max_bytes)
    _teacher_cache.append(cache)
    try:
        yield cache
    finally:
        _teacher_cache.remove(cache)


def distillation_loss(model: PreTrainedModel, batch: torch.Tensor) -> torch.Tensor:
    """`KL(p_dense || p_masked)` of the next-token distributions, summed over the vocabulary, averaged over tokens.

    The teacher is the same model with every `group_masks` bypassed (no gradient); the student is the masked model.
    Its gradient at the dense model is zero, so it serves the fusion training only, never the gradient statistics.
    """
    with torch.no_grad(), masks_suspended():
        if _teacher_cache:
            teacher = _teacher_cache[-1].teacher_log_probs(model, batch)
        else:
            teacher = model(input_ids=batch, use_cache=False).logits.float().log_softmax(-1)
    student = model(input_ids=batch, use_cache=False).logits.float().log_softmax(-1)
    return torch.nn.functional.kl_div(student, teacher, reduction="none", log_target=True).sum(-1).mean()


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def encoder_distillation_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """`1 - cos(student, target)` of mean-pooled last hidden states, averaged over the batch.

    The target is the embedding of the full input by the dense model (computed once per batch, the first time the
    batch is seen, i.e. during the gradient pass, and then cached); the student is the embedding of the same input
    with `ENCODER_TOKEN_DROP` of its tokens hidden from attention (a fixed pattern per batch). An encoder has no LM
    head: this denoising objective has a non-zero gradient at the dense weights, and it measures what sentence
    embeddings lose when a group is removed. See docs/method.md, "Encoders".
    """
    targets = vars(model).setdefault(_DENSE_TARGETS, {})
    # crc32, not hash(): Python salts hash() per process, and the pattern must not change between runs
    key = (tuple(batch.shape), zlib.crc32(batch.cpu().numpy().tobytes()))
    full = torch.ones_like(batch)
    if key not in targets:
        with torch.no_grad():
            hidden = model(input_ids=batch, attention_mask=full, output_hidden_states=True).hidden_states[-1]
            targets[key] = _mean_pool(hidden, full).detach()
    generator = torch.Generator().manual_seed(key[1])
    keep = torch.rand(batch.shape, generator=generator) >= ENCODER_TOKEN_DROP
    keep[:, 0] = True  # the [CLS] position always stays
    keep = keep.to(batch.device).long()
    hidden = model(input_ids=batch, attention_mask=keep, output_hidden_states=True).hidden_states[-1]
    student = _mean_pool(hidden, keep)
    return (1 - torch.nn.functional.cosine_similarity(student, targets[key], dim=-1)).mean()
