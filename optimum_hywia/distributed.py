"""Data-parallel calibration over `torch.distributed` (`torchrun`, `accelerate launch`, or your own process group).

When a process group is initialised, `HyWIAPruner.prune` uses it with no other change to the user's code:

- **gradient statistics**: calibration batch `i` runs on rank `i % world_size`; each rank folds its own batches and
  the sums (and batch counts) are all-reduced before ranking. The statistics are sums, so the result is the one a
  single process gets on all the batches (up to the order of float64 additions);
- **fusion training**: every step's batch is split by rows across the ranks; each rank's loss is weighted by its share
  of the rows and the fusion module's gradients are summed across ranks before each optimiser step, which is the
  gradient of the whole batch's loss. Every rank takes the same step, so the fusion modules stay identical;
- the kept groups are broadcast from rank 0, so every rank removes exactly the same groups.

Every rank holds a full copy of the model (or, with a `device_map`, its own model-parallel placement): data
parallelism divides the calibration time, not the memory per rank.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .groups import Key
from .importance.statistics import GradientStatistics


def distributed_world() -> tuple[int, int]:
    """`(rank, world_size)` of the default process group; `(0, 1)` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors; gloo (and mpi) CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_batches(batches: Sequence[torch.Tensor], rank: int, world_size: int) -> list[torch.Tensor]:
    """The calibration batches rank `rank` runs: every `world_size`-th one, starting at its rank."""
    return list(batches[rank::world_size])


def all_reduce_statistics(statistics: GradientStatistics) -> None:
    """Sum every rank's gradient statistics and batch count in place (one collective). No-op without a group."""
    _, world_size = distributed_world()
    if world_size == 1:
        return
    parts = [
        tensor
        for key in sorted(statistics.stats)
        for stats in statistics.stats[key]
        for tensor in (stats.signed, stats.absolute, stats.squared)
    ]
    parts += [statistics.output_fisher[key] for key in sorted(statistics.output_fisher)]
    flat = torch.cat(
        [torch.tensor([float(statistics.num_batches)], dtype=torch.float64), *(p.flatten() for p in parts)]
    )
    flat = flat.to(_collective_device())
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat.cpu()
    statistics.num_batches = int(round(float(flat[0])))
    offset = 1
    for part in parts:
        part.copy_(flat[offset : offset + part.numel()].view_as(part))
        offset += part.numel()


def broadcast_kept_groups(kept: dict[Key, torch.Tensor]) -> dict[Key, torch.Tensor]:
    """Rank 0's kept group indices on every rank (they agree already; this makes it a guarantee)."""
    _, world_size = distributed_world()
    if world_size == 1:
        return kept
    payload = [{key: indices.tolist() for key, indices in kept.items()}]
    dist.broadcast_object_list(payload, src=0)
    return {key: torch.tensor(indices, dtype=torch.long) for key, indices in payload[0].items()}


class RowShardedModel(nn.Module):
    """Wraps a calibration model: each rank runs its share of every batch's rows, weighted by that share.

    The returned loss has the whole batch's value on every rank (for logging and finiteness checks) and, once the
    ranks' gradients are summed, the whole batch's gradient.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor, use_cache: bool = False, objective: str = "lm"
    ) -> SimpleNamespace:
        rank, world_size = distributed_world()
        rows = input_ids.shape[0]
        if rows < world_size:
            raise ValueError(
                f"A calibration batch of {rows} rows cannot be split across {world_size} ranks: use a "
                f"calibration_batch_size of at least {world_size} (and num_calibration_samples to match)."
            )
        local_ids = torch.tensor_split(input_ids, world_size)[rank]
        local_labels = torch.tensor_split(labels, world_size)[rank]
        local = self.model(input_ids=local_ids, labels=local_labels, use_cache=False, objective=objective).loss
        weighted = local * (local_ids.shape[0] / rows)
        total = weighted.detach().clone().to(_collective_device())
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return SimpleNamespace(loss=weighted + (total.to(weighted.device) - weighted.detach()))


@contextmanager
def summed_gradients(module: nn.Module) -> Iterator[None]:
    """Within the block, before any optimiser steps `module`'s parameters, their gradients are summed over ranks."""
    _, world_size = distributed_world()
    if world_size == 1:
        yield
        return
    owned = {id(param) for param in module.parameters()}

    def all_reduce_gradients(optimizer, args, kwargs) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if id(p) in owned]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads]).to(_collective_device())
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.to(params[0].device)
        offset = 0
        for param in params:
            param.grad = flat[offset : offset + param.numel()].view_as(param).clone()
            offset += param.numel()

    handle = register_optimizer_step_pre_hook(all_reduce_gradients)
    try:
        yield
    finally:
        handle.remove()
