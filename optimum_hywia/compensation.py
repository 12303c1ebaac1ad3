"""The compensate stage: remove the selected groups layer by layer and refit the projections that stay.

`HyWIAConfig.reconstruction` chooses what happens to each projection a group slices along its *input* (`o_proj`,
`down_proj`, `dense`, `fc2`, `c_proj`, ...: `Projection.dim == "in"`), whose output the removed input channels fed:

- `"none"`: slice only;
- `"bias"`: FLAP's bias compensation: the removed channels' mean contribution moves into the bias,
  `b' = b + W[:, R] · mean(X_R)`;
- `"least_squares"`: the kept columns are refit so that they reproduce what the whole projection produced on the
  same inputs, `W' = argmin ‖X_S W'ᵀ − X Wᵀ‖² + λ‖W' − W_S‖²` (with a bias column where the module can carry one),
  from the Gram matrix `G = XᵀX`: `W'ᵀ = (G_SS + λI)⁻¹ (G_S: Wᵀ + λ W_Sᵀ)`, with
  `λ = reconstruction_ridge · mean(diag G)`. The ridge pulls toward the sliced dense weights (as the damping of
  SparseGPT/SlimGPT's OBS updates does; the solution equals their updates): a large ridge falls back to slicing.

The statistics are those of the *pruned* model (SparseGPT/SlimGPT order): the calibration tokens' hidden states are
propagated through the layers already pruned and compensated. For each layer, attention first, then the MLP (whose
inputs depend on the pruned attention): run the layer with this kind still whole and accumulate `G`, the column sums
and the token count (float32 products per micro-batch, summed in float64; all-reduced across data-parallel ranks);
slice the kind's groups; refit. The pruned layer then produces the next layer's inputs. Memory: the hidden states of
the calibration tokens and one layer's statistics; cost: about four forward passes over the calibration data (one
records the layers' calls).

Several selections of one model (the candidates of `selection.py`) are compensated in lockstep, each on its own copy
(`remove_and_compensate_together`): the recording and the dense stream below are shared, and each copy ends exactly
as compensated alone.

Drift correction (`reconstruction_drift` = β > 0, least squares only): the same tokens also run through the dense
layers (`DenseStream`, one more forward pass), and the target becomes `X Wᵀ + β · (r_dense − r)`, with `r` the
residual stream right after the projection's output joins it (`ArchitectureSpec.residual_points`), on the pruned
model with this kind whole and on the dense model: each refit takes back a share of the drift that the layers pruned
so far left in the residual stream. Extra memory: the dense hidden states and the stream at one layer's points.

Re-selection (`reconstruction_reselect`, least squares only; always with `importance="slimgpt"`): before a kind is
sliced, which of its groups go is re-chosen on the statistics just collected by greedy structured OBS
(`optimum_hywia.obs`), toward the refit's own target; the layer keeps the number of groups the importance gave it.
A removal's cost is the change of the projection's output in the metric of its output Fisher (the loss gradients at
that output, from the gradient pass; `reconstruction_reselect_damping`), or the plain squared error (SlimGPT's).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.utils import logging

from .architectures import ArchitectureSpec
from .configuration import RECONSTRUCTIONS
from .groups import BoundProjection, GroupSet, Key, decoder_layers
from .importance.registry import get_importance
from .importance.statistics import _encoder
from .obs import output_metric, reselect_by_obs
from .offload import add_parameter, execution_device, module_tensor, set_parameter
from .surgery import apply_layer_structure, planned_widths, pruned_structure, remove_groups

logger = logging.get_logger(__name__)

__all__ = [
    "RECONSTRUCTIONS",
    "InputStatistics",
    "check_reconstruction",
    "refit",
    "remove_and_compensate",
    "remove_and_compensate_together",
]


@dataclass
class InputStatistics:
    """Sufficient statistics of one projection's inputs: `gram = XᵀX` (float64, or None), column sums, token count;
    with `reconstruction_drift`, also `drift_cross = XᵀD` and `drift_sums = Σ D`, where `D` is the residual stream's
    drift from the dense model on the same tokens (`[tokens, out]`)."""

    sums: torch.Tensor
    gram: torch.Tensor | None
    count: int = 0
    drift_cross: torch.Tensor | None = None
    drift_sums: torch.Tensor | None = None

    def add(self, inputs: torch.Tensor) -> None:
        rows = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        self.sums += rows.sum(0).double().to(self.sums.device)
        if self.gram is not None:
            self.gram += (rows.T @ rows).double().to(self.gram.device)
        self.count += rows.shape[0]

    def add_drift(self, inputs: torch.Tensor, drift: torch.Tensor) -> None:
        rows = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        drift = drift.detach().reshape(-1, drift.shape[-1]).float()
        if self.drift_cross is None:
            self.drift_cross = self.sums.new_zeros(rows.shape[1], drift.shape[1])
            self.drift_sums = self.sums.new_zeros(drift.shape[1])
        self.drift_cross += (rows.T @ drift).double().to(self.sums.device)
        self.drift_sums += drift.sum(0).double().to(self.sums.device)

    def all_reduce(self) -> None:
        from .distributed import _collective_device, distributed_world

        if distributed_world()[1] == 1:
            return
        import torch.distributed as dist

        # every rank holds every part (a rank without tokens still sums zeros), in the same order
        parts = [part for part in (self.sums, self.gram, self.drift_cross, self.drift_sums) if part is not None]
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.sums.device)
        flat = torch.cat([count, *(part.flatten() for part in parts)]).to(_collective_device())
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.to(self.sums.device)
        self.count = int(round(float(flat[0])))
        offset = 1
        for part in parts:
            part.copy_(flat[offset : offset + part.numel()].view_as(part))
            offset += part.numel()


def dense_weight(projection: BoundProjection) -> torch.Tensor:
    """The weight as `[out, in]` (a `Conv1D` stores `[in, out]`)."""
    weight = module_tensor(projection.module, "weight").detach()
    return weight.T if projection.transposed else weight


def refit(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kept: torch.Tensor,
    statistics: InputStatistics,
    reconstruction: str,
    ridge: float,
    fit_bias: bool,
    drift: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The compensated `[out, |kept|]` weight and bias of a projection whose input columns `kept` stay.

    `weight` `[out, in]` and `bias` are the whole projection's; `fit_bias`: the result carries a bias (the module
    has one, or the family can switch one on); `drift`: the share of the statistics' residual drift the least-squares
    target adds (`X Wᵀ + b + drift · D`). Solved in float64; returned in `weight`'s dtype.
    """
    dtype = weight.dtype
    w = weight.double().to(statistics.sums.device)
    b = (
        bias.double().to(w.device)
        if bias is not None
        else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    )
    kept = kept.to(w.device)
    count = max(statistics.count, 1)
    new_bias = b if (fit_bias or bias is not None) else None
    if reconstruction == "bias":
        removed = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
        removed[kept] = False
        if fit_bias:
            new_bias = b + w[:, removed] @ (statistics.sums[removed] / count)
        new_weight = w[:, kept]
    elif reconstruction == "least_squares":
        gram = statistics.gram
        gram_kept = gram[kept][:, kept]
        damping = ridge * gram.diagonal().mean().clamp_min(1e-12)  # as the OBS damping of the whole H
        target = gram[kept] @ w.T + damping * w[:, kept].T  # X_Sᵀ X Wᵀ; the ridge pulls toward W_S
        drifted = drift > 0 and statistics.drift_cross is not None
        if drifted:
            target = target + drift * statistics.drift_cross[kept]  # X_Sᵀ (X Wᵀ + β D)
        size = len(kept)
        if fit_bias:
            sums_kept = statistics.sums[kept]
            system = torch.zeros(size + 1, size + 1, dtype=torch.float64, device=w.device)
            system[:size, :size] = gram_kept
            system[:size, size] = system[size, :size] = sums_kept
            system[size, size] = count
            system[:size, :size].diagonal().add_(damping)
            total = statistics.sums @ w.T + count * b + (drift * statistics.drift_sums if drifted else 0)
            rhs = torch.cat([target + sums_kept[:, None] * b, total[None]])
            solution = _solve(system, rhs)
            new_weight, new_bias = solution[:size].T, solution[size]
        else:
            system = gram_kept.clone()
            system.diagonal().add_(damping)
            new_weight = _solve(system, target).T
    else:
        raise ValueError(f"Unknown reconstruction {reconstruction!r}: expected one of {list(RECONSTRUCTIONS)}.")
    new_weight = new_weight.to(weight.device, dtype)
    return new_weight, (new_bias.to(weight.device, dtype) if new_bias is not None else None)


def _solve(system: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """`system⁻¹ rhs` for a symmetric positive (semi-)definite system: Cholesky, else least squares."""
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    return torch.linalg.lstsq(system, rhs).solution


def bias_switches(spec: ArchitectureSpec, kind: str) -> str | None:
    return dict(spec.bias_switches).get(kind)


def enable_bias(model: nn.Module, spec: ArchitectureSpec, kind: str) -> None:
    """Switch on the family's bias for a module kind (e.g. Llama's `mlp_bias`): zero biases on every projection of
    that kind in every layer, so the checkpoint still loads with the family's own class."""
    switch = bias_switches(spec, kind)
    setattr(spec.widths_config(model.config), switch, True)
    _, layers = decoder_layers(model, spec)
    for layer in layers:
        for projection in spec.projections(kind):
            module = layer.get_submodule(projection.path)
            if getattr(module, "bias", None) is None:  # switches exist for nn.Linear families ([out, in])
                weight = module_tensor(module, "weight")
                zeros = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
                add_parameter(module, "bias", zeros, module.weight.requires_grad)


def can_carry_bias(projection: BoundProjection, spec: ArchitectureSpec, kind: str, allow_switch: bool) -> bool:
    return getattr(projection.module, "bias", None) is not None or (
        allow_switch and bias_switches(spec, kind) is not None
    )


def check_reconstruction(spec: ArchitectureSpec, config: Any, group_sets: list[GroupSet]) -> None:
    """Refuse, before anything is computed, a reconstruction the checkpoint cannot carry."""
    if config.reconstruction != "bias":
        return
    for group_set in group_sets:
        for projection in group_set.projections:
            if projection.spec.dim == "in" and not can_carry_bias(
                projection, spec, group_set.kind, config.reconstruction_bias
            ):
                raise ValueError(
                    f"reconstruction='bias' needs a bias on {projection.name}, which the {spec.name} checkpoint "
                    "cannot carry: use reconstruction='least_squares' (or 'none')."
                )


class _Stop(Exception):
    """Raised by the last layer's pre-hook: the layers' inputs are captured; the head need not run."""


def _chunks(batches: list[torch.Tensor], micro_batch_size: int | None) -> list[torch.Tensor]:
    return [chunk for batch in batches for chunk in torch.split(batch, micro_batch_size or batch.shape[0])]


def _first_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def forward_chunks(model: nn.Module, chunks: list[torch.Tensor], autocast_dtype: str | None = None, progress=False):
    """Run the model on every chunk of token ids (an encoder sees every token); a hook may stop a pass early."""
    device, encoder = execution_device(model), _encoder(model)
    dtype = getattr(torch, autocast_dtype) if autocast_dtype else None
    with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
        for chunk in tqdm(chunks, desc="HyWIA calibration (activations)", disable=not progress):
            chunk = chunk.to(device)
            try:
                if encoder is not None:
                    encoder(input_ids=chunk, attention_mask=torch.ones_like(chunk))
                else:
                    model(input_ids=chunk, use_cache=False)
            except _Stop:
                pass


def new_statistics(projection: BoundProjection, device: torch.device, gram: bool) -> InputStatistics:
    size = projection.size
    return InputStatistics(
        torch.zeros(size, dtype=torch.float64, device=device),
        torch.zeros(size, size, dtype=torch.float64, device=device) if gram else None,
    )


def collect_input_statistics(
    model: nn.Module, config: Any, projections: list[tuple[Any, BoundProjection]], batches, progress: bool = True
) -> dict[Any, InputStatistics]:
    """Input statistics (with Gram matrices) of the given projections over one forward pass of the model as it is,
    sharded across data-parallel ranks and all-reduced."""
    from .distributed import distributed_world, shard_batches

    rank, world_size = distributed_world()
    device = execution_device(model)
    statistics = {key: new_statistics(projection, device, gram=True) for key, projection in projections}
    handles = [
        projection.module.register_forward_pre_hook(lambda m, args, s=statistics[key]: s.add(args[0]))
        for key, projection in projections
    ]
    try:
        chunks = _chunks(shard_batches(batches, rank, world_size), config.calibration_micro_batch_size)
        forward_chunks(model, chunks, config.autocast_dtype, progress)
    finally:
        for handle in handles:
            handle.remove()
    for value in statistics.values():
        value.all_reduce()
    return statistics


class LayerwiseRunner:
    """The decoder layers' calls of every calibration chunk, replayable one layer at a time.

    One forward pass of the model records, for every layer, the arguments it receives besides the hidden states
    (masks, position embeddings, ALiBi; they may differ per layer, e.g. Gemma 3's sliding layers), and the hidden
    states entering the first layer.
    """

    def __init__(self, model: nn.Module, spec: ArchitectureSpec, chunks: list[torch.Tensor], autocast_dtype=None):
        _, self.layers = decoder_layers(model, spec)
        self.device = execution_device(model)
        self.autocast = getattr(torch, autocast_dtype) if autocast_dtype else None
        self.calls: list[list[tuple[tuple, dict]]] = [[] for _ in self.layers]
        self.hidden: list[torch.Tensor] = []
        handles = [
            layer.register_forward_pre_hook(self._recorder(index), with_kwargs=True)
            for index, layer in enumerate(self.layers)
        ]
        try:
            forward_chunks(model, chunks, autocast_dtype)
        finally:
            for handle in handles:
                handle.remove()
        if len(self.hidden) != len(chunks) or any(len(calls) != len(chunks) for calls in self.calls):
            raise RuntimeError("Not every decoder layer was called once per calibration batch: cannot compensate.")

    def replay_on(self, model: nn.Module, spec: ArchitectureSpec) -> LayerwiseRunner:
        """A runner over `model`'s layers with these recorded calls and first-layer inputs: `model` must be a copy of
        the recorded one up to its first decoder layer (a candidate selection's copy, `selection.py`)."""
        runner = copy.copy(self)
        _, runner.layers = decoder_layers(model, spec)
        return runner

    def _recorder(self, index: int):
        last = len(self.layers) - 1

        def record(module, args, kwargs):
            kwargs = dict(kwargs)
            if args:
                hidden, rest = args[0], tuple(args[1:])
            else:
                hidden, rest = kwargs.pop("hidden_states"), ()
            if index == 0:
                self.hidden.append(hidden.detach())
            self.calls[index].append((rest, kwargs))
            if index == last:
                raise _Stop

        return record

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else nullcontext()

    @torch.no_grad()
    def outputs(self, index: int, hidden: list[torch.Tensor], keep: bool = True) -> list[torch.Tensor]:
        """Run layer `index` on `hidden` (one tensor per chunk); its outputs, or nothing without `keep`."""
        outputs = []
        with self._autocast():
            for states, (rest, kwargs) in zip(hidden, self.calls[index]):
                output = _first_output(self.layers[index](states, *rest, **kwargs))
                if keep:
                    outputs.append(output.detach())
        return outputs

    def run(self, index: int, keep_outputs: bool) -> None:
        """Run layer `index` on the current hidden states; with `keep_outputs`, they become its outputs."""
        outputs = self.outputs(index, self.hidden, keep_outputs)
        if keep_outputs:
            self.hidden = outputs


def residual_hook(layer: nn.Module, path: str, callback):
    """Call `callback(stream)` with the residual stream at `path` of a decoder layer at every call of the layer: the
    input of the module at `path`, or the layer's output for `""` (`ArchitectureSpec.residual_points`)."""
    if not path:
        return layer.register_forward_hook(lambda module, args, output: callback(_first_output(output)))

    def pre_hook(module, args, kwargs):
        callback(args[0] if args else kwargs["hidden_states"])

    return layer.get_submodule(path).register_forward_pre_hook(pre_hook, with_kwargs=True)


class DenseStream:
    """The dense model's hidden states on the calibration chunks, beside the pruned model's, and its residual stream
    at the points of the kinds pruned in the current layer (`reconstruction_drift`)."""

    def __init__(self, runner: LayerwiseRunner, points: dict[str, str]):
        self.runner, self.points = runner, points
        self.hidden: list[torch.Tensor] | None = None  # None: still equal to the pruned model's
        self.at: dict[str, list[torch.Tensor]] = {}

    def advance(self, index: int, kinds: set[str]) -> None:
        """Run the still-dense layer `index`, whose `kinds` are about to be pruned, recording the stream at their
        points; then step past it."""
        self.at = {kind: [] for kind in kinds if kind in self.points}
        if not kinds and self.hidden is None:
            return  # nothing pruned up to here: the pruned model's states are still the dense ones
        layer = self.runner.layers[index]
        handles = [
            residual_hook(layer, self.points[kind], lambda stream, kept=kept: kept.append(stream.detach().clone()))
            for kind, kept in self.at.items()
        ]
        try:
            self.hidden = self.runner.outputs(index, self.runner.hidden if self.hidden is None else self.hidden)
        finally:
            for handle in handles:
                handle.remove()

    def drift_hooks(
        self, layer: nn.Module, kind: str, inputs: list[tuple[int, BoundProjection]], statistics: dict
    ) -> list:
        """Hooks that add `XᵀD` to the statistics of the kind's input-sliced projections while the pruned layer runs:
        each projection's inputs are held until the residual point, where `D` = dense − pruned stream of the same
        chunk. Returns the handles (none when the kind has no residual point)."""
        if kind not in self.at:
            return []
        held: dict[int, torch.Tensor] = {}
        chunks = iter(self.at[kind])

        def hold(i: int):
            return lambda module, args: held.__setitem__(i, args[0].detach())

        def at_point(stream: torch.Tensor) -> None:
            dense = next(chunks, None)
            if dense is None or len(held) != len(inputs):
                raise RuntimeError(
                    f"The residual point of {kind!r} is not reached once per layer call after its inputs."
                )
            for i, rows in held.items():
                statistics[i].add_drift(rows, dense - stream)
            held.clear()

        for i, projection in inputs:  # zeros from the start: a rank without chunks still all-reduces them
            sums = statistics[i].sums
            statistics[i].drift_cross = sums.new_zeros(projection.size, dense_weight(projection).shape[0])
            statistics[i].drift_sums = sums.new_zeros(dense_weight(projection).shape[0])
        handles = [projection.module.register_forward_pre_hook(hold(i)) for i, projection in inputs]
        return [*handles, residual_hook(layer, self.points[kind], at_point)]


def group_reselection(config: Any) -> Callable | None:
    """How compensation re-chooses the groups of each set on the pruned model's inputs (greedy OBS), or None where
    it removes the given groups. Where it re-chooses, a selection only decides how many groups each set keeps."""
    if config.reconstruction == "least_squares" and config.reconstruction_reselect:
        return reselect_by_obs
    return getattr(get_importance(config.importance), "reselect", None)


def remove_and_compensate(
    model: nn.Module,
    spec: ArchitectureSpec,
    config: Any,
    group_sets: list[GroupSet],
    kept: dict[Key, torch.Tensor],
    batches: list[torch.Tensor],
    widths_before: list[dict[str, int]],
    show_progress: bool = True,
    output_fisher: dict[Key, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Slice every set's groups, layer by layer, refitting the input-sliced projections (`config.reconstruction`).

    `kept` is updated in place where the groups of a layer are re-chosen on the pruned model's inputs
    (`config.reconstruction_reselect`, or an importance method with a `reselect`: SlimGPT's greedy OBS); the number
    of groups each set keeps never changes. With `config.reconstruction_reselect`, a set's `output_fisher` (the
    gradient pass's, `GradientStatistics.output_fisher`) damped by `config.reconstruction_reselect_damping` is the
    metric the removals are judged in (`obs.output_metric`); without it, the plain squared error.

    Returns, for each input-sliced projection refit by least squares, the relative error of its new output against
    the whole projection's own output on the same calibration inputs (`{"<module path>": error}`; the drift share of
    the target is not counted), averaged into the report by the caller.
    """
    targets = [(model, group_sets, kept)]
    (errors,) = remove_and_compensate_together(
        targets, spec, config, batches, widths_before, show_progress, output_fisher
    )
    return errors


def remove_and_compensate_together(
    targets: list[tuple[nn.Module, list[GroupSet], dict[Key, torch.Tensor]]],
    spec: ArchitectureSpec,
    config: Any,
    batches: list[torch.Tensor],
    widths_before: list[dict[str, int]],
    show_progress: bool = True,
    output_fisher: dict[Key, torch.Tensor] | None = None,
) -> list[dict[str, float]]:
    """`remove_and_compensate` of several copies of one dense model, each `(model, group_sets, kept)` with its own
    selection, in lockstep layer by layer (`selection.compensate_best_selection`'s candidates).

    Each model ends exactly as compensated alone; what does not depend on the selection is computed once: the
    recording of the layers' calls (one forward pass) and, with drift correction, the dense model's stream (one
    more). Returns each target's refit errors, in order.
    """
    from .distributed import distributed_world, shard_batches

    rank, world_size = distributed_world()
    chunks = _chunks(shard_batches(batches, rank, world_size), config.calibration_micro_batch_size)
    compensators = [
        _LayerCompensator(model, spec, config, group_sets, kept, widths_before, output_fisher)
        for model, group_sets, kept in targets
    ]
    runner = LayerwiseRunner(targets[0][0], spec, chunks, config.autocast_dtype)
    for compensator in compensators:
        compensator.runner = runner.replay_on(compensator.model, spec)
    dense_stream = None
    if compensators[0].drift and spec.residual_points:  # until a target prunes a layer, its states are the dense ones
        dense_stream = DenseStream(compensators[0].runner, dict(spec.residual_points))
    last = max(compensator.last for compensator in compensators)
    for index in tqdm(range(last + 1), desc="HyWIA compensation", disable=not show_progress):
        if dense_stream is not None:  # the layer is still dense in every target: any target's serves
            dense_stream.advance(index, set().union(*(c.kinds_pruned(index) for c in compensators)))
        for compensator in compensators:
            compensator.step(index, dense_stream)
    return [compensator.errors for compensator in compensators]


class _LayerCompensator:
    """One model's part of `remove_and_compensate_together`: its selection, its hidden states, its refits."""

    def __init__(self, model, spec, config, group_sets, kept, widths_before, output_fisher) -> None:
        self.model, self.spec, self.config, self.kept = model, spec, config, kept
        self.by_layer: dict[int, list[GroupSet]] = {}
        for group_set in group_sets:
            self.by_layer.setdefault(group_set.layer, []).append(group_set)
        self.last = max(self.by_layer)
        self.switched = set()
        for kind in dict.fromkeys(gs.kind for gs in group_sets):
            sample = next(p for gs in group_sets if gs.kind == kind for p in gs.projections if p.spec.dim == "in")
            if (
                config.reconstruction_bias
                and getattr(sample.module, "bias", None) is None
                and bias_switches(spec, kind)
            ):
                enable_bias(model, spec, kind)
                self.switched.add(kind)
        self.reselect = group_reselection(config)
        self.fisher = None  # the metric OBS judges removals in, where it is the output Fisher's
        if config.reconstruction == "least_squares" and config.reconstruction_reselect:
            if config.reconstruction_reselect_damping is not None:
                self.fisher = output_fisher or {}
        self.structure = pruned_structure(model, spec, planned_widths(widths_before, group_sets, kept))
        self.drift = config.reconstruction_drift if config.reconstruction == "least_squares" else 0.0
        self.runner: LayerwiseRunner | None = None
        self.errors: dict[str, float] = {}

    def pruned_sets(self, index: int) -> list[GroupSet]:
        """The layer's sets that lose groups (a set with nothing removed has nothing to slice or refit)."""
        return [gs for gs in self.by_layer.get(index, []) if len(self.kept[gs.key]) < gs.num_groups]

    def kinds_pruned(self, index: int) -> set[str]:
        return {gs.kind for gs in self.pruned_sets(index)}

    def step(self, index: int, dense_stream: DenseStream | None) -> None:
        """Slice and refit layer `index`'s sets, then move the hidden states past the layer."""
        if index > self.last:
            return
        model, config, runner, reconstruction = self.model, self.config, self.runner, self.config.reconstruction
        for group_set in self.pruned_sets(index):
            inputs = [(i, p) for i, p in enumerate(group_set.projections) if p.spec.dim == "in"]
            statistics = {}
            handles = []
            for i, projection in inputs:
                statistics[i] = new_statistics(projection, execution_device(model), reconstruction == "least_squares")
                handles.append(
                    projection.module.register_forward_pre_hook(lambda m, args, s=statistics[i]: s.add(args[0]))
                )
            if dense_stream is not None:
                handles += dense_stream.drift_hooks(runner.layers[index], group_set.kind, inputs, statistics)
            try:
                runner.run(index, keep_outputs=False)
            finally:
                for handle in handles:
                    handle.remove()
            dense = {}
            for i, projection in inputs:
                statistics[i].all_reduce()
                bias = getattr(projection.module, "bias", None)
                dense[i] = (
                    dense_weight(projection).clone(),
                    None if bias is None else module_tensor(projection.module, "bias").detach().clone(),
                )
            if self.reselect is not None:  # greedy OBS chooses the groups on the pruned model's inputs
                self.kept[group_set.key] = self.reselect(
                    group_set,
                    dense,
                    statistics,
                    len(self.kept[group_set.key]),
                    config.reconstruction_ridge,
                    self.drift,
                    self.metric(group_set.key),
                )
            groups = self.kept[group_set.key]
            remove_groups([group_set], self.kept)
            apply_layer_structure(model, self.spec, self.structure, index, group_set.kind)
            for i, projection in inputs:
                weight, bias = dense[i]
                columns = group_set.indices(i, groups)
                fit_bias = bias is not None or group_set.kind in self.switched
                new_weight, new_bias = refit(
                    weight,
                    bias,
                    columns,
                    statistics[i],
                    reconstruction,
                    config.reconstruction_ridge,
                    fit_bias,
                    self.drift,
                )
                if statistics[i].gram is not None:  # the error needs the Gram matrix (not kept for "bias")
                    self.errors[projection.name] = relative_error(
                        weight, bias, columns, new_weight, new_bias, statistics[i]
                    )
                set_parameter(
                    projection.module, "weight", new_weight.T.contiguous() if projection.transposed else new_weight
                )
                if new_bias is not None:
                    set_parameter(projection.module, "bias", new_bias)
        if index < self.last:
            runner.run(index, keep_outputs=True)

    def metric(self, key: Key) -> torch.Tensor | None:
        """The output Fisher metric OBS judges the set's removals in, or None (the plain squared error)."""
        if self.fisher is None:
            return None
        if key not in self.fisher:
            raise ValueError(
                f"reconstruction_reselect_damping needs the output Fisher of {key} from the gradient pass: "
                "pass the one score_groups returns, or set reconstruction_reselect_damping=None."
            )
        return output_metric(self.fisher[key], self.config.reconstruction_reselect_damping)


def relative_error(weight, bias, kept, new_weight, new_bias, statistics: InputStatistics) -> float:
    """`‖X_S W'ᵀ + b' − (X Wᵀ + b)‖² / ‖X Wᵀ + b‖²` on the calibration inputs, from their statistics."""
    gram, sums, count = statistics.gram, statistics.sums, statistics.count
    w = weight.double().to(gram.device)
    b = (
        torch.zeros(w.shape[0], dtype=torch.float64, device=gram.device)
        if bias is None
        else bias.double().to(gram.device)
    )
    full = torch.zeros_like(w)
    full[:, kept.to(gram.device)] = new_weight.double().to(gram.device)
    delta_w = full - w
    delta_b = torch.zeros_like(b) if new_bias is None else new_bias.double().to(gram.device) - b

    def energy(matrix, vector):  # Σ_tokens ‖x Mᵀ + v‖²
        return float(((matrix @ gram) * matrix).sum() + 2 * (matrix @ sums) @ vector + count * vector @ vector)

    return energy(delta_w, delta_b) / max(energy(w, b), 1e-30)
