"""Memory-lean calibration passes and the memory estimate printed before a pruning run.

`CalibrationModel` wraps a causal LM for the calibration passes (gradient statistics and fusion training) and adds,
without changing any result beyond float rounding:

- **micro-batches**: a calibration batch is run as chunks of `micro_batch_size` rows, each chunk's forward wrapped
  in a (non-reentrant) activation checkpoint, so that the backward pass recomputes and frees one chunk at a time.
  The loss is the row-weighted mean of the chunk losses, i.e. the loss of the whole batch, so the gradients (and the
  gradient statistics) are those of the whole batch;
- **bf16 autocast** of the forward pass (`autocast_dtype="bfloat16"`); weights and gradients stay in their dtype;
- **gradient checkpointing** of every decoder layer (`gradient_checkpointing=True`): only each layer's input is kept
  during the forward pass; the layer is recomputed during backward. Unlike transformers' own switch this works in
  eval mode, so dropout stays off and the numbers do not change.

`estimate_calibration_memory` predicts the peak of a calibration pass from the model's shapes and the config, and
`check_calibration_memory` refuses a run that cannot fit, naming the settings that lower the peak.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.pytorch_utils import Conv1D

from .architectures import ArchitectureSpec
from .groups import decoder_layers, head_dim
from .importance.statistics import calibration_loss
from .offload import execution_device, offloaded_parameter_names

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16}
GIB = 1024**3


class CalibrationModel(nn.Module):
    """A causal LM whose `forward(input_ids, labels)` runs in micro-batches, under autocast, with checkpointing.

    It exposes the wrapped model's parameters, so it can be handed to `GradientStatistics.collect` and
    `HybridFusion.train` in place of the model.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ArchitectureSpec | None = None,
        micro_batch_size: int | None = None,
        autocast_dtype: str | None = None,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype must be None or one of {list(AUTOCAST_DTYPES)}, got {autocast_dtype!r}.")
        if gradient_checkpointing and spec is None:
            raise ValueError("gradient_checkpointing needs the model's ArchitectureSpec to find its decoder layers.")
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {micro_batch_size}.")
        self.model = model
        self.spec = spec
        self.micro_batch_size = micro_batch_size
        self.autocast_dtype = autocast_dtype
        self.gradient_checkpointing = gradient_checkpointing

    @property
    def config(self) -> Any:
        return self.model.config

    def _loss(self, input_ids: torch.Tensor, labels: torch.Tensor, objective: str = "lm") -> torch.Tensor:
        device = input_ids.device
        autocast = (
            torch.autocast(device.type, dtype=AUTOCAST_DTYPES[self.autocast_dtype])
            if self.autocast_dtype
            else nullcontext()
        )
        # entered here, not in forward: a micro-batch's recomputation during backward must checkpoint the same way
        layers = checkpointed_layers(self.model, self.spec) if self.gradient_checkpointing else nullcontext()
        with autocast, layers:
            return calibration_loss(self.model, input_ids, objective).float()

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor, use_cache: bool = False, objective: str = "lm"
    ) -> SimpleNamespace:
        """The mean calibration loss of the whole batch (as `.loss`), computed chunk by chunk."""
        rows = input_ids.shape[0]
        if self.micro_batch_size is None or self.micro_batch_size >= rows:
            return SimpleNamespace(loss=self._loss(input_ids, labels, objective))
        # calibration windows all have the same length, so the batch mean is the row-weighted chunk mean
        loss = 0.0
        for start in range(0, rows, self.micro_batch_size):
            chunk_ids = input_ids[start : start + self.micro_batch_size]
            chunk_labels = labels[start : start + self.micro_batch_size]
            chunk_loss = checkpoint(
                with_current_hooks(self._loss, self.model), chunk_ids, chunk_labels, objective, use_reentrant=False
            )
            loss = loss + chunk_loss * (chunk_ids.shape[0] / rows)
        return SimpleNamespace(loss=loss)


@contextmanager
def checkpointed_layers(model: nn.Module, spec: ArchitectureSpec) -> Iterator[None]:
    """Within the block, every decoder layer's forward is an activation checkpoint (recomputed during backward).

    Call the model with `use_cache=False` inside it: a replayed layer would write its keys and values twice.
    """
    _, layers = decoder_layers(model, spec)
    originals = []
    try:
        for layer in layers:
            original = layer.forward
            originals.append((layer, "forward" in vars(layer), original))

            @functools.wraps(original)
            def forward(*args, _original=original, _layer=layer, **kwargs):
                if not torch.is_grad_enabled():
                    return _original(*args, **kwargs)
                return checkpoint(with_current_hooks(_original, _layer), *args, use_reentrant=False, **kwargs)

            layer.forward = forward
        yield
    finally:
        for layer, had_instance_forward, original in originals:
            if had_instance_forward:
                layer.forward = original
            else:
                del layer.forward


_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def with_current_hooks(function: Callable, module: nn.Module) -> Callable:
    """`function`, run with the forward hooks `module`'s submodules have now, also when replayed later.

    A checkpoint replays its forward during backward; hooks installed only around the forward call (the fusion
    training's group masks) are gone by then, and the replay would compute something else.
    """
    snapshot = [(m, {name: dict(getattr(m, name)) for name in _HOOK_DICTS}) for m in module.modules()]

    def replay(*args, **kwargs):
        current = [(m, {name: getattr(m, name) for name in _HOOK_DICTS}) for m, _ in snapshot]
        try:
            for m, hooks in snapshot:
                for name, registered in hooks.items():
                    setattr(m, name, OrderedDict(registered))
            return function(*args, **kwargs)
        finally:
            for m, hooks in current:
                for name, registered in hooks.items():
                    setattr(m, name, registered)

    return replay


@dataclass
class MemoryEstimate:
    """Predicted peak memory of a calibration pass, in bytes, by part."""

    weights: int
    activations: int
    gradients: int
    statistics: int
    device: str
    available: int | None = None
    offloaded: int = 0  # offloaded prunable weights, restored for a forward and kept by autograd until its backward

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.gradients + self.statistics + self.offloaded

    def summary(self) -> str:
        names = ("weights", "activations", "gradients", "statistics") + (("offloaded",) if self.offloaded else ())
        parts = ", ".join(f"{name} {getattr(self, name) / GIB:.2f}" for name in names)
        available = f"; {self.available / GIB:.2f} GiB available" if self.available is not None else ""
        return f"HyWIA calibration memory estimate on {self.device}: {self.total / GIB:.2f} GiB ({parts}){available}"


def estimate_calibration_memory(
    model: nn.Module,
    spec: ArchitectureSpec,
    batch_size: int,
    sequence_length: int,
    micro_batch_size: int | None = None,
    autocast_dtype: str | None = None,
    gradient_checkpointing: bool = False,
    trainable_fraction: float = 1.0,
    output_fisher_sets: int = 0,
) -> MemoryEstimate:
    """Predicted peak of one calibration forward/backward pass.

    The widths are read through the family's table (`spec.config_keys` of `spec.widths_config`: Falcon's
    `num_kv_heads`/`ffn_hidden_size`, GPT-2's `n_embd`/`n_inner`, Gemma 3's `text_config`); GPT-2's `Conv1D`
    projections count like `nn.Linear`.

    - weights: every parameter and buffer as loaded, except those offloaded (CPU/disk, on `meta`);
    - activations: what autograd keeps for one micro-batch: per decoder layer and token about 8 hidden-size and 5
      MLP-width vectors plus 4 attention-width vectors (attention inputs and outputs, q/k/v, norms, gate/up/act), the
      final logits three times (logits, float32 log-softmax, their gradient); with gradient checkpointing one
      hidden-size vector per layer plus one layer's full set;
    - gradients: the lean path frees each gradient once folded, so the transient peak is the largest prunable
      weight; with micro-batches autograd accumulates the batch gradient of every prunable weight first
      (`trainable_fraction` of the decoder-layer weights);
    - statistics: three float64 sums per row/column of every prunable projection, plus, for `output_fisher_sets`
      group sets, one float32 `[hidden, hidden]` output Fisher each (`HyWIAConfig.reconstruction_reselect`; the
      input-sliced projections all write to the residual stream);
    - offloaded: the prunable weights of offloaded layers (`trainable_fraction` of them), which the offload hooks
      restore on the execution device for a forward and which autograd keeps there until that batch's backward.
    """
    spec = spec.for_config(model.config)
    config, keys = spec.widths_config(model.config), spec.config_keys
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(p.numel() * p.element_size() for p in params if p.device.type != "meta")  # offloaded: not resident
    weights += sum(b.numel() * b.element_size() for b in model.buffers() if b.device.type != "meta")
    parameter_bytes = 2 if autocast_dtype else next(iter(params)).element_size()
    hidden = getattr(config, keys.hidden_size)
    # a family without an MLP-width key (Bloom), or GPT-2's n_inner=None, has the 4 * hidden MLP
    intermediate = (getattr(config, keys.intermediate_size, None) if keys.intermediate_size else None) or 4 * hidden
    heads = getattr(config, keys.num_heads)
    kv_heads = 1 if spec.shared_kv else (getattr(config, keys.num_kv_heads, None) if keys.num_kv_heads else None)
    attention_width = (2 * heads + 2 * (kv_heads or heads)) * head_dim(model.config, spec)
    num_layers = getattr(config, keys.num_layers)
    rows = min(micro_batch_size or batch_size, batch_size)
    tokens = rows * sequence_length
    per_layer_token = 8 * hidden + 5 * intermediate + attention_width
    if gradient_checkpointing:
        layer_activations = tokens * (num_layers * hidden + per_layer_token)
    else:
        layer_activations = tokens * num_layers * per_layer_token
    logits = 3 * tokens * config.vocab_size * 4
    activations = layer_activations * parameter_bytes + logits
    layers_path, layers = decoder_layers(model, spec)
    # GPT-2's Conv1D stores its weight [in, out]: the sizes below do not depend on the orientation
    layer_linears = [m for m in layers[0].modules() if isinstance(m, (nn.Linear, Conv1D))]
    largest = max((m.weight.numel() for m in layer_linears), default=0) * 4
    decoder_weights = sum(p.numel() for p in layers.parameters() if p.ndim == 2)
    if micro_batch_size is not None and micro_batch_size < batch_size:
        gradients = int(decoder_weights * trainable_fraction) * 4
    else:
        gradients = 2 * largest
    statistics = 3 * 8 * num_layers * sum(sum(m.weight.shape) for m in layer_linears)
    statistics += output_fisher_sets * hidden * hidden * 4
    offloaded_names = offloaded_parameter_names(model)
    offloaded = sum(
        p.numel() * p.element_size() * trainable_fraction
        for name, p in layers.named_parameters(prefix=layers_path)
        if p.ndim == 2 and name in offloaded_names
    )
    device = execution_device(model)
    return MemoryEstimate(
        weights, int(activations), gradients, statistics, str(device), available_memory(device), int(offloaded)
    )


def available_memory(device: torch.device) -> int | None:
    """Free memory on `device` (accelerator) or of the machine (CPU), in bytes; `None` when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            import psutil
        except ImportError:
            return None
        return int(psutil.virtual_memory().available)
    return None


def check_calibration_memory(estimate: MemoryEstimate, headroom: float = 0.9) -> None:
    """Raise `MemoryError`, naming the knobs, when the pass needs more than `headroom` of the free memory.

    The weights are already loaded, so only the rest of the estimate has to fit in what is free.
    """
    if estimate.available is None:
        return
    needed = estimate.total - estimate.weights
    if needed <= headroom * estimate.available:
        return
    raise MemoryError(
        f"{estimate.summary()}. The calibration pass needs {needed / GIB:.2f} GiB on top of the loaded weights but "
        f"only {estimate.available / GIB:.2f} GiB is free: lower calibration_micro_batch_size (rows per "
        "forward/backward), set gradient_checkpointing=True and autocast_dtype='bfloat16', shorten "
        "calibration_sequence_length, or spread the model over more devices with device_map "
        "(set check_memory=False to try anyway)."
    )
