"""Group masks applied to a model's forward pass, without touching its weights.

A mask value per group multiplies the columns that group owns in the projections it reads through (`o_proj` input
for a KV-head group, `down_proj` input for an MLP channel). A 0/1 mask reproduces physical removal exactly; a soft
mask in (0, 1) makes removal differentiable for the fusion training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..groups import GroupSet

_suspended = [0]  # > 0: group masks pass inputs through unchanged


@contextmanager
def masks_suspended() -> Iterator[None]:
    """Within the block, every active `group_masks` is bypassed: the forward pass is the unmasked model's."""
    _suspended[0] += 1
    try:
        yield
    finally:
        _suspended[0] -= 1


@contextmanager
def group_masks(group_sets: list[GroupSet], masks: dict[tuple[int, str], torch.Tensor]) -> Iterator[None]:
    """Within the block, the groups of `group_sets` are scaled by `masks[group_set.key]` (sets without one: 1)."""
    handles = []
    try:
        for group_set in group_sets:
            mask = masks.get(group_set.key)
            if mask is None:
                continue
            for projection, group_of_index in zip(group_set.projections, group_set.group_of_index):
                if projection.spec.dim != "in":
                    continue
                device = projection.module.weight.device
                if device.type == "meta":  # offloaded: the input's device is known only at forward time
                    device = mask.device
                # rows shared by every group (multi-query KV) map to index num_groups: never masked
                full_mask = torch.cat([mask.to(device), mask.new_ones(1).to(device)])
                column_mask = full_mask[group_of_index.to(device)]

                def scale_input(module, args, column_mask=column_mask):
                    if _suspended[0]:
                        return None
                    return (args[0] * column_mask.to(args[0].device, args[0].dtype), *args[1:])

                handles.append(projection.module.register_forward_pre_hook(scale_input))
        yield
    finally:
        for handle in handles:
            handle.remove()
