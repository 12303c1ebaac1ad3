"""The compensated choice between whole selections (`HyWIAConfig.selection_candidates`).

HyWIA's fusion and ranking choice judge selections by the *uncompensated* calibration objective, but the model that
is saved is compensated, and compensation changes which selection is best (docs/method.md §7b, "A compensated choice
between whole selections"). So, when compensation is on, the pruner builds the candidates -- HyWIA's selection and the
selection of each named single estimate over the same plan (its own per-layer counts and ranking) -- compensates
each (`compensation.remove_and_compensate_together`) and keeps the one whose compensated model has the lowest
`KL(p_dense ‖ p_pruned)` of the next-token distributions (the fusion training's objective) on *held-out* windows of
the calibration text (`scoring.held_out_batches`): windows no earlier stage saw -- HyWIA's own selection was fitted
to the calibration windows -- and four times as long, since a selection fitted on short windows can lose at longer
context. The dense teacher's outputs are computed once, before anything is removed.

Every candidate but the last is compensated on a copy of the model; the last one in place; all in lockstep, layer
by layer, so that the recording of the layers' calls and the dense model's stream (drift correction) are computed
once for all. If a copy wins, its decoder layers replace the model's. The compensated candidates then race over the
held-out chunks (`race`): one clearly further from the dense model drops out after a few chunks, so a clear choice
reads only part of them. Cost: per candidate, a compensation pass less those two shared forward passes; one forward
of the dense model over the held-out windows and at most one per candidate; memory: one more copy of the model and
of the calibration hidden states per candidate but the last, and the dense model's outputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .compensation import group_reselection, remove_and_compensate, remove_and_compensate_together
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


def distinct_candidates(
    candidates: dict[str, dict[Key, torch.Tensor]], counts_only: bool = False
) -> dict[str, dict[Key, torch.Tensor]]:
    """The candidates in order, without those that keep exactly the groups of an earlier one; with `counts_only`
    (compensation re-chooses the groups itself, `compensation.group_reselection`), without those that keep as many
    groups of every set as an earlier one: both would give the same compensated model."""

    def same(kept: dict[Key, torch.Tensor], other: dict[Key, torch.Tensor]) -> bool:
        if counts_only:
            return all(len(kept[key]) == len(other[key]) for key in kept)
        return all(torch.equal(kept[key], other[key]) for key in kept)

    distinct: dict[str, dict[Key, torch.Tensor]] = {}
    for name, kept in candidates.items():
        if not any(same(kept, other) for other in distinct.values()):
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
def chunk_kl(model: nn.Module, teacher_model: nn.Module, teacher: TeacherCache, chunk: torch.Tensor) -> torch.Tensor:
    """`[sum over the chunk's tokens of KL(p_dense ‖ p_model), number of tokens]` (float64)."""
    chunk = chunk.to(execution_device(model))
    dense = teacher.teacher_log_probs(teacher_model, chunk)
    student = model(input_ids=chunk, use_cache=False).logits.float().log_softmax(-1)
    kl = torch.nn.functional.kl_div(student, dense, reduction="none", log_target=True).sum(-1)
    return torch.tensor([float(kl.double().sum()), kl.numel()], dtype=torch.float64)


@torch.no_grad()
def calibration_kl(model: nn.Module, teacher_model: nn.Module, teacher: TeacherCache, chunks) -> float:
    """Mean over this rank's calibration tokens (all ranks' tokens when distributed) of `KL(p_dense ‖ p_model)`."""
    total = sum(
        (chunk_kl(model, teacher_model, teacher, chunk) for chunk in chunks), torch.zeros(2, dtype=torch.float64)
    )
    return mean_over_ranks(total)


def race(
    models: dict[str, nn.Module], teacher_model: nn.Module, teacher: TeacherCache, chunks
) -> tuple[str, dict[str, float]]:
    """The model closest to the dense one over the held-out chunks (the first on a tie), and each model's mean KL.

    The models race chunk by chunk as the ranking choice's candidates do (`importance.ranking`): from
    `RACE_MIN_BATCHES` chunks on, one whose paired mean difference to the leader exceeds `RACE_Z` standard errors
    drops out, and the race ends when one is left. The winner's loss is over the chunks it raced on; a dropped
    model's is the winner's plus their paired mean difference over the chunks it saw. Data-parallel ranks hold
    different chunks, so there every model sees every chunk (losses over all ranks' tokens)."""
    from .distributed import distributed_world
    from .importance.ranking import race_survivors

    alive, totals = list(models), {name: torch.zeros(2, dtype=torch.float64) for name in models}
    per_chunk: dict[str, list[float]] = {name: [] for name in models}
    racing = distributed_world()[1] == 1
    for index, chunk in enumerate(chunks):
        if racing and len(alive) == 1:
            break
        for name in alive:
            value = chunk_kl(models[name], teacher_model, teacher, chunk)
            totals[name] += value
            per_chunk[name].append(float(value[0] / value[1].clamp_min(1)))
        if racing:
            alive = race_survivors(alive, per_chunk, index + 1)
    losses = {name: mean_over_ranks(totals[name]) for name in alive}
    winner = min(alive, key=losses.get)
    for name in models.keys() - set(alive):
        seen = len(per_chunk[name])
        difference = sum(per_chunk[name]) - sum(per_chunk[winner][:seen])
        losses[name] = losses[winner] + difference / seen
    return winner, {name: losses[name] for name in models}


def mean_over_ranks(total: torch.Tensor) -> float:
    """`total[0] / total[1]` of a `[sum, count]` pair, summed over data-parallel ranks first."""
    from .distributed import distributed_world

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
    output_fisher: dict[Key, torch.Tensor] | None = None,
) -> SelectionChoice:
    """Remove and compensate each candidate selection; leave `model` pruned with the one of lowest compensated KL
    on the `held_out` batches (raced, `race`; the first on a tie). `candidates` maps a name to kept groups
    (`allocation.select_groups`); `batches` are the calibration batches that compensation fits on;
    `output_fisher`: the metric of its OBS re-selection (`remove_and_compensate`)."""
    from .compensation import _chunks
    from .distributed import distributed_world, shard_batches

    candidates = distinct_candidates(candidates, counts_only=group_reselection(config) is not None)
    names = list(candidates)

    def compensate(name: str, target: nn.Module, sets: list[GroupSet]) -> tuple[dict, dict[str, float]]:
        kept = {key: value.clone() for key, value in candidates[name].items()}  # a reselecting method updates it
        errors = remove_and_compensate(
            target, spec, config, sets, kept, batches, widths_before, show_progress, output_fisher
        )
        return kept, errors

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
    models = {name: copy.deepcopy(model) for name in names[:-1]} | {names[-1]: model}
    targets = []
    for name, target in models.items():
        sets = group_sets if target is model else build_group_sets(target, spec, pruned_layers, kinds)
        targets.append((target, sets, {key: value.clone() for key, value in candidates[name].items()}))
    errors_of = remove_and_compensate_together(
        targets, spec, config, batches, widths_before, show_progress, output_fisher
    )
    results = {name: (target[2], errors) for name, target, errors in zip(models, targets, errors_of)}
    chosen, losses = race(models, teacher_model, teacher, chunks)
    logger.info(f"HyWIA: compensated held-out KL of the candidate selections: {losses}")
    kept, errors = results[chosen]
    if chosen != names[-1]:
        clone = models[chosen]
        layers = model.get_submodule(layers_path)
        clone_layers = clone.get_submodule(layers_path)
        for index in pruned_layers:
            layers[index] = clone_layers[index]
            for module in layers[index].modules():  # layers that hold the model's config hold the copy's
                if getattr(module, "config", None) is clone.config:
                    module.config = model.config
    return SelectionChoice(chosen, kept, errors, losses)
