"""The compensated choice between whole selections (`HyWIAConfig.selection_candidates`).

HyWIA's fusion and ranking choice judge selections by the *uncompensated* calibration objective, but the model that
is saved is compensated, and compensation changes which selection is best (docs/method.md §7b, "A compensated choice
between whole selections"). So, when compensation is on, the pruner builds the candidates -- HyWIA's selection and the
selection of each named single estimate over the same plan (its own per-layer counts and ranking) -- compensates
each (`compensation.remove_and_compensate`) and keeps the one whose compensated model has the lowest
`KL(p_dense ‖ p_pruned)` of the next-token distributions (the fusion training's objective) on *held-out* windows of
the calibration text (`scoring.held_out_batches`): windows no earlier stage saw -- HyWIA's own selection was fitted
to the calibration windows -- and four times as long, since a selection fitted on short windows can lose at longer
context. The dense teacher's outputs are computed once, before anything is removed.

Every candidate but the last is compensated on a copy of the model; the last one in place. If a copy wins, its
decoder layers replace the model's. Cost: one compensation pass and one forward over the calibration data per
candidate; memory: one more copy of the model at a time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .compensation import remove_and_compensate
from .groups import GroupSet, Key, build_group_sets, decoder_layers
from .importance.statistics import TeacherCache, _encoder
from .memory import available_memory
from .offload import execution_device, offloaded_parameter_names

logger = logging.get_logger(__name__)

__all__ = ["SelectionChoice", "compensate_best_selection"]


@dataclass
class SelectionChoice:
    """The chosen candidate, its kept groups, its refit errors, and every candidate's compensated objective."""

    chosen: str
    kept: dict[Key, torch.Tensor]
    errors: dict[str, float]
    losses: dict[str, float]


def distinct_candidates(candidates: dict[str, dict[Key, torch.Tensor]]) -> dict[str, dict[Key, torch.Tensor]]:
    """The candidates in order, without those that keep exactly the groups of an earlier one."""
    distinct: dict[str, dict[Key, torch.Tensor]] = {}
    for name, kept in candidates.items():
        same = any(all(torch.equal(kept[key], other[key]) for key in kept) for other in distinct.values())
        if not same:
            distinct[name] = kept
    return distinct


def why_no_choice(model: nn.Module, spec: Any) -> str | None:
    """Why the choice cannot run on this model (it copies the model), or None."""
    if offloaded_parameter_names(model) or any(p.device.type == "meta" for p in model.parameters()):
        return "the model is offloaded (the choice compensates a copy of it)"
    if _encoder(model) is not None or model.get_output_embeddings() is None:
        return "the model has no output head to compare next-token distributions"
    return None


@torch.no_grad()
def calibration_kl(model: nn.Module, teacher_model: nn.Module, teacher: TeacherCache, chunks) -> float:
    """Mean over this rank's calibration tokens (all ranks' tokens when distributed) of `KL(p_dense ‖ p_model)`."""
    from .distributed import distributed_world

    device = execution_device(model)
    total = torch.zeros(2, dtype=torch.float64)
    for chunk in chunks:
        chunk = chunk.to(device)
        dense = teacher.teacher_log_probs(teacher_model, chunk)
        student = model(input_ids=chunk, use_cache=False).logits.float().log_softmax(-1)
        kl = torch.nn.functional.kl_div(student, dense, reduction="none", log_target=True).sum(-1)
        total += torch.tensor([float(kl.double().sum()), kl.numel()], dtype=torch.float64)
    if distributed_world()[1] > 1:
        import torch.distributed as dist

        from .distributed import _collective_device

        reduced = total.to(_collective_device())
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        total = reduced.cpu()
    return float(total[0] / total[1].clamp_min(1))


def compensate_best_selection(
    model: nn.Module,
    spec: Any,
    config: Any,
    group_sets: list[GroupSet],
    candidates: dict[str, dict[Key, torch.Tensor]],
    batches: list[torch.Tensor],
    widths_before: list[dict[str, int]],
    show_progress: bool = True,
    held_out: list[torch.Tensor] | None = None,
) -> SelectionChoice:
    """Remove and compensate each candidate selection; leave `model` pruned with the one of lowest compensated KL
    on the `held_out` batches (the first on a tie). `candidates` maps a name to kept groups
    (`allocation.select_groups`); `batches` are the calibration batches that compensation fits on."""
    from .compensation import _chunks
    from .distributed import distributed_world, shard_batches

    candidates = distinct_candidates(candidates)
    names = list(candidates)

    def compensate(name: str, target: nn.Module, sets: list[GroupSet]) -> tuple[dict, dict[str, float]]:
        kept = {key: value.clone() for key, value in candidates[name].items()}  # a reselecting method updates it
        return kept, remove_and_compensate(target, spec, config, sets, kept, batches, widths_before, show_progress)

    reason = why_no_choice(model, spec) if len(names) > 1 else None
    teacher = TeacherCache((available_memory(torch.device("cpu")) or 0) // 4)
    teacher_model = model  # its output head is never pruned: cached hidden states stay exact after surgery
    if len(names) > 1 and not reason:
        if not held_out:
            logger.warning(
                "HyWIA: the calibration data has no windows to spare, so the choice between selections is judged on "
                "the calibration windows, to which HyWIA's own selection was fitted: pass more calibration text."
            )
        rank, world_size = distributed_world()
        chunks = _chunks(shard_batches(held_out or batches, rank, world_size), config.calibration_micro_batch_size)
        device = execution_device(model)
        with torch.no_grad():
            for chunk in chunks:
                teacher.teacher_log_probs(teacher_model, chunk.to(device))
        if len(teacher.entries) < len({c.numpy().tobytes() for c in chunks}):
            reason = "the dense model's outputs do not fit in memory"
    if len(names) == 1 or reason:
        if reason:
            logger.warning(f"HyWIA: no compensated choice between selections: {reason}; keeping {names[0]}'s.")
        kept, errors = compensate(names[0], model, group_sets)
        return SelectionChoice(names[0], kept, errors, {})

    layers_path, _ = decoder_layers(model, spec)
    pruned_layers = sorted({gs.layer for gs in group_sets})
    kinds = tuple(dict.fromkeys(gs.kind for gs in group_sets))
    losses: dict[str, float] = {}
    best: tuple[str, nn.Module, dict, dict] | None = None
    for name in names[:-1]:
        clone = copy.deepcopy(model)
        kept, errors = compensate(name, clone, build_group_sets(clone, spec, pruned_layers, kinds))
        losses[name] = calibration_kl(clone, teacher_model, teacher, chunks)
        if best is None or losses[name] < losses[best[0]]:
            best = (name, clone, kept, errors)
        del clone
    last = names[-1]
    kept, errors = compensate(last, model, group_sets)
    losses[last] = calibration_kl(model, teacher_model, teacher, chunks)
    logger.info(f"HyWIA: compensated calibration KL of the candidate selections: {losses}")
    if best is not None and losses[best[0]] <= losses[last]:
        name, clone, kept, errors = best
        layers = model.get_submodule(layers_path)
        clone_layers = clone.get_submodule(layers_path)
        for index in pruned_layers:
            layers[index] = clone_layers[index]
            for module in layers[index].modules():  # layers that hold the model's config hold the copy's
                if getattr(module, "config", None) is clone.config:
                    module.config = model.config
        return SelectionChoice(name, kept, errors, losses)
    return SelectionChoice(last, kept, errors, losses)
