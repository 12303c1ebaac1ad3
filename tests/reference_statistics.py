"""The straightforward full-gradient computation of the gradient statistics: the reference for the lean hooks.

This is how importance is usually computed (LLM-Pruner style): every parameter requires a gradient, each calibration
batch runs a plain `loss.backward()` into full-size `.grad` tensors, and full-size accumulators of `w * grad`
(signed, absolute, squared: the Fisher-diagonal term) are kept for every prunable weight; the per-row/column sums
are taken at the end. It gives the same numbers as `GradientStatistics` (to float rounding) and costs the full
gradient plus three full-size accumulators of memory: tests check the equality and `benchmarks/prune_cost.py` measures
the cost against it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from optimum_hywia.importance import statistics as lean_statistics
from optimum_hywia.importance.statistics import GradientStatistics, calibration_loss, check_finite
from optimum_hywia.offload import execution_device


class FullGradientStatistics(GradientStatistics):
    """`GradientStatistics` computed from full gradients and full-size accumulators (the naive reference)."""

    def collect(self, model: torch.nn.Module, batches: Iterable[torch.Tensor], show_progress: bool = True) -> None:
        """Run plain forward/backward passes over `batches`, accumulate full-size saliences, reduce at the end."""
        projections = [
            (projection, stats)
            for group_set in self.group_sets
            for projection, stats in zip(group_set.projections, self.stats[group_set.key])
        ]
        # one full-size (signed, absolute, squared) accumulator per prunable weight, bias appended as a column
        accumulators: dict[str, list[torch.Tensor]] = {}
        previous = [(param, param.requires_grad) for param in model.parameters()]
        device = execution_device(model)
        encoder = lean_statistics._encoder(model)
        if encoder is not None:  # as in the lean path: distillation targets come from this (dense) model
            vars(encoder).pop(lean_statistics._DENSE_TARGETS, None)
        try:
            for param in model.parameters():
                param.requires_grad_(True)
            for batch in tqdm(list(batches), desc="HyWIA calibration (full gradients)", disable=not show_progress):
                model.zero_grad(set_to_none=True)
                batch = batch.to(device)
                loss = calibration_loss(model, batch)
                check_finite(loss, "calibration loss")
                loss.backward()
                for projection, _ in projections:
                    salience = _salience(projection)
                    sums = accumulators.setdefault(projection.name, [torch.zeros_like(salience) for _ in range(3)])
                    sums[0] += salience
                    sums[1] += salience.abs()
                    sums[2] += salience.square()
                self.num_batches += 1
        finally:
            for param, requires_grad in previous:
                param.requires_grad_(requires_grad)
                param.grad = None
        for projection, stats in projections:
            if projection.name not in accumulators:
                continue
            reduce_dim = 1 - projection.weight_axis  # Conv1D weights are [in, out]
            signed, absolute, squared = accumulators.pop(projection.name)
            stats.signed += signed.sum(reduce_dim).double().cpu()
            stats.absolute += absolute.sum(reduce_dim).double().cpu()
            stats.squared += squared.sum(reduce_dim).double().cpu()
        for key, per_projection in self.stats.items():
            for stats in per_projection:
                check_finite(stats.absolute, f"gradient statistics of layer {key[0]} ({key[1]})")


def _salience(projection) -> torch.Tensor:
    """`w * dL/dw` of a projection in float32; an output-sliced projection's bias is appended as one more vector."""
    module = projection.module
    salience = (module.weight.detach() * module.weight.grad).float()
    if projection.sliced_bias:
        bias = (module.bias.detach() * module.bias.grad).float()
        axis = projection.weight_axis
        salience = torch.cat([salience, bias[:, None] if axis == 0 else bias[None, :]], 1 - axis)
    return salience
