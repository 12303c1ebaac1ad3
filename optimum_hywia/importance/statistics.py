"""Per-group gradient statistics, folded in the moment each gradient is ready.

A post-accumulate-grad hook on every prunable weight turns `s = w * dL/dw` into three sums per row (or column) of
the sliced dimension and frees the gradient, so no full-size gradient or Fisher accumulator is ever held:

- `signed`: sum of `s` (linear in the gradient, so exact across calibration batches),
- `absolute`: sum of `|s|`,
- `squared`: sum of `s**2` (the Fisher-diagonal term `w F w` of the second-order estimate).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from ..groups import GroupSet

logger = logging.get_logger(__name__)


@dataclass
class IndexStatistics:
    """Sums over the rows/columns of one projection, accumulated over calibration batches."""

    signed: torch.Tensor
    absolute: torch.Tensor
    squared: torch.Tensor


class GradientStatistics:
    """Collect `IndexStatistics` for every projection of `group_sets` during backward passes."""

    def __init__(self, group_sets: list[GroupSet]):
        self.group_sets = group_sets
        self.stats: dict[tuple[int, str], list[IndexStatistics]] = {}
        self.num_batches = 0
        for group_set in group_sets:
            self.stats[group_set.key] = [
                IndexStatistics(*(torch.zeros(p.size, dtype=torch.float64) for _ in range(3)))
                for p in group_set.projections
            ]

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
                reduce_dim = 1 if projection.spec.dim == "out" else 0
                weight, bias = projection.module.weight, projection.module.bias
                tracked[id(weight)] = (weight, self._hook(stats, reduce_dim))
                if projection.spec.dim == "out" and bias is not None:
                    tracked[id(bias)] = (bias, self._hook(stats, 1))
        previous = [(param, param.requires_grad) for param in model.parameters()]
        handles = []
        try:
            for param in model.parameters():
                param.requires_grad_(id(param) in tracked)
            handles = [param.register_post_accumulate_grad_hook(hook) for param, hook in tracked.values()]
            device = next(model.parameters()).device
            batches = list(batches)
            for batch in tqdm(batches, desc="HyWIA calibration (gradients)", disable=not show_progress):
                batch = batch.to(device)
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                check_finite(loss, "calibration loss")
                loss.backward()
                self.num_batches += 1
        finally:
            for handle in handles:
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
            f"The {what} is NaN or infinite. Load the model in float32 (torch_dtype=torch.float32) or bfloat16 "
            "rather than float16, and check the calibration data."
        )
