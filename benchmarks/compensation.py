"""Compensation benchmark: every importance method with every reconstruction, on held-out text of three domains.

Same model, same calibration windows and the same structure budget for every run. Calibration: `--calibration mix`
(the package's offline mix, `optimum_hywia.data.text_sources.calibration_mix`: LAMBADA novels + Wikipedia articles
from the second half of the dump) or `novels` (LAMBADA passages only). Evaluation: perplexity over 512-token windows
of three texts no calibration text overlaps: Wikipedia (the first articles of the gensim dump), novels (the last
`HELDOUT_LAMBADA` LAMBADA passages) and news (the Lee corpus, a domain absent from calibration).

A method `hywia+element2` is HyWIA with the compensated choice between its selection and element2's own
(`selection_candidates=("element2",)`, the default from 2026-12-05), `hywia+element2+vector` with vector's as well
(the default since 2026-12-06); plain `hywia` runs without the choice (`selection_candidates=()`, as every HyWIA run
before it).

Each run is cached as one JSON file under `--results`, so the matrix can be run (and killed) in pieces:

    .venv/bin/python benchmarks/compensation.py --ratios 0.5 0.2 --runs dense element1:none element1:least_squares \
        flap:bias flap:least_squares hywia:least_squares
    .venv/bin/python benchmarks/compensation.py --report   # markdown table of the cache

Each pruned model is also saved (safetensors, `--models`, outside the repository), so zero-shot accuracy can be added
to cached runs later: `--accuracy-limit 500` scores the first 500 items of each of the seven tasks (ARC-Challenge:
all 299) through lm-eval, item by item, and the report pairs every method against `flap` on the same items.
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
from optimum_hywia.data import lambada_texts
from optimum_hywia.data.assets import cache_root
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.data.text_sources import calibration_mix, evaluation_texts
from optimum_hywia.evaluation import PAPER_TASKS, evaluate_zero_shot, paired_difference, perplexity
from optimum_hywia.modeling import load_pruned_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "compensation"
MODELS = cache_root() / "benchmarks" / "compensation"  # the saved pruned models (outside the repository)
TEXTS = ("wikipedia", "novels", "news")
NUM_LAYERS = 30  # SmolLM2-135M's decoder layers
LEGACY_LAYERS = {"per_layer": "3-28", "uniform": "0-30"}  # the default layer ranges before 2026-12-05
BEGIN, END = "<!-- table: benchmarks/compensation.py --report -->", "<!-- end of table -->"


def calibration_texts(name: str) -> list[str]:
    if name == "mix":
        return calibration_mix()
    if name == "novels":
        passages = lambada_texts()
        return passages[: len(passages) // 2]
    raise ValueError(f"unknown calibration {name!r}")


def layer_range(args, layout: str, num_layers: int = NUM_LAYERS) -> tuple[int, int]:
    """The `[start, end)` layers a run prunes: `--layers`, or the library default for the layout."""
    if args.layers:
        return tuple(args.layers)
    return HyWIAConfig(layout=layout).resolve_layer_range(num_layers)


def layers_of(record: dict) -> str:
    """A record's pruned layers as `start-end`; records from before the field was kept used the then default."""
    return record.get("layers") or LEGACY_LAYERS[record["layout"]]


def layers_suffix(layers: str, layout: str, template: str) -> str:
    """`template` filled with `layers` (`start-end`), or nothing for the legacy default range of `layout` (whose keys,
    labels and plots predate the field)."""
    return "" if layers == LEGACY_LAYERS[layout] else template.format(layers)


def run_label(record: dict) -> str:
    """`method:reconstruction`, with the pruned layers where they are not the legacy default."""
    layers = layers_suffix(layers_of(record), record["layout"], " (layers {})")
    return f"{record['method']}:{record['reconstruction']}{layers}"


def run_key(method: str, reconstruction: str, ratio: float, layout: str, seed: int, args) -> str:
    if method == "dense":
        return "dense"
    calibration = f"{args.calibration}{args.samples}x{args.sequence_length}"
    start, end = layer_range(args, layout)
    layers = layers_suffix(f"{start}-{end}", layout, "-layers{}")
    return f"{method}-{reconstruction}-{layout}-r{ratio:g}-s{seed}-{calibration}{layers}"


def with_drift(reconstruction: str, drift: float) -> str:
    """The run's reconstruction label: least squares with drift correction is `least_squares+drift<β>` (records
    before the option existed, and `--drift 0`, are plain `least_squares`); `least_squares+obs` (groups re-chosen
    by greedy OBS, `reconstruction_reselect`, judged by the plain squared error) becomes
    `least_squares+drift<β>+obs`; `+fobs`: the same OBS judged in the output Fisher's metric (damping 0.01);
    `+steps<k>`: pruned gradually in k re-scored steps (`pruning_steps`)."""
    base, *options = reconstruction.split("+")
    if base == "least_squares" and drift:
        options = [f"drift{drift:g}", *options]
    return "+".join([base, *options])


def pruning_steps(reconstruction: str) -> int:
    """`k` of a `+steps<k>` option of the reconstruction label, else 1 (one shot)."""
    steps = [option[len("steps") :] for option in reconstruction.split("+") if option.startswith("steps")]
    return int(steps[0]) if steps else 1


def run_one(args, dense, tokenizer, method: str, reconstruction: str, ratio: float, layout: str, seed: int) -> dict:
    model = copy.deepcopy(dense)
    record: dict[str, Any] = {
        "method": method,
        "reconstruction": reconstruction,
        "ratio": ratio,
        "layout": layout,
        "seed": seed,
        "calibration": args.calibration,
        "samples": args.samples,
        "sequence_length": args.sequence_length,
        "layers": "-".join(map(str, layer_range(args, layout))),
    }
    start = time.perf_counter()
    if method != "dense":
        importance, _, candidates = method.partition("+")  # "hywia+element2": HyWIA with the compensated choice
        config = HyWIAConfig(
            pruning_ratio=ratio,
            layout=layout,
            seed=seed,
            importance=importance,
            selection_candidates=tuple(candidates.split("+")) if candidates else (),
            reconstruction=reconstruction.partition("+")[0],
            reconstruction_drift=args.drift,
            reconstruction_reselect=bool({"obs", "fobs"} & set(reconstruction.split("+"))),
            reconstruction_reselect_damping=None if "obs" in reconstruction.split("+") else 0.01,
            num_calibration_samples=args.samples,
            calibration_sequence_length=args.sequence_length,
            layer_range=layer_range(args, layout),
            pruning_steps=pruning_steps(reconstruction),
        )
        pruner = HyWIAPruner(model, config, tokenizer)
        pruner.prune(calibration_data=calibration_texts(args.calibration), show_progress=False)
        pruner.save_pretrained(Path(args.models) / run_key(method, reconstruction, ratio, layout, seed, args), True)
        record.update(
            config=pruner.config.to_dict(),  # with its data-dependent defaults resolved
            achieved_ratio=pruner.report.achieved_ratio,
            layer_widths=[layer["after"] for layer in pruner.report.layers],
            seconds=pruner.report.seconds,
            selection=pruner.report.selection,
            selection_losses=pruner.report.selection_losses,
            reconstruction_error=(
                statistics.mean(pruner.report.reconstruction_errors.values())
                if pruner.report.reconstruction_errors
                else None
            ),
        )
    record["prune_seconds"] = time.perf_counter() - start
    record["params"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    record["eval_windows"] = args.eval_windows
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        answer = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    record["answer"] = tokenizer.decode(answer[0], skip_special_tokens=True)
    record["ppl"] = {
        name: perplexity(
            model, tokenizer, text, sequence_length=512, max_windows=args.eval_windows, show_progress=False
        )
        for name, text in evaluation_texts().items()
    }
    return record


def run_matrix(args: argparse.Namespace) -> None:
    name_or_path, kwargs, description = model_source(args.model)
    print(f"model: {description}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    dense = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs).eval()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    for ratio in args.ratios:
        for seed in args.seeds:
            for layout in args.layouts:
                for run in args.runs:
                    method, _, reconstruction = run.partition(":")
                    reconstruction = with_drift(reconstruction or "none", args.drift)
                    key = run_key(method, reconstruction, ratio, layout, seed, args)
                    path = results / f"{key}.json"
                    if path.exists():
                        record = json.loads(path.read_text())
                    else:
                        torch.manual_seed(seed)
                        record = run_one(args, dense, tokenizer, method, reconstruction, ratio, layout, seed)
                        save_results(path, record)
                        ppl = "  ".join(f"{name} {value:8.2f}" for name, value in record["ppl"].items())
                        print(f"{key:<58} {ppl}  ({record['prune_seconds']:.0f} s)", flush=True)
                    if args.accuracy_limit and (record.get("zero_shot_limit") or 0) < args.accuracy_limit:
                        _add_accuracy(args, record, path, key, dense, tokenizer)


def save_results(path: Path, results: dict | list) -> None:
    """Write `results` as JSON through a temporary file, so a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=1) + "\n")
    temporary.replace(path)


def _add_accuracy(args, record: dict, path: Path, key: str, dense, tokenizer) -> None:
    """Zero-shot accuracy, item by item, of the run's saved model (the dense model for `dense`)."""
    saved = Path(args.models) / key
    if key == "dense":
        model = dense
    elif saved.is_dir():
        model = load_pruned_model(saved).eval()
    else:
        print(f"{key}: no saved model under {saved}; delete {path} to prune it again", flush=True)
        return
    start = time.perf_counter()
    record["zero_shot"] = evaluate_zero_shot(
        model, tokenizer, limit=args.accuracy_limit, batch_size=args.batch_size, per_item=True
    )
    record["zero_shot_limit"] = args.accuracy_limit
    record["zero_shot_seconds"] = time.perf_counter() - start
    save_results(path, record)
    average = 100 * record["zero_shot"]["average"]["acc"]
    print(f"{key:<58} 7-task acc {average:.2f}  ({record['zero_shot_seconds']:.0f} s)", flush=True)


def calibration_of(record: dict) -> str:
    return f"{record['calibration']} {record['samples']}x{record['sequence_length']}"


def summarise(records: list[dict]) -> list[dict]:
    """One row per (ratio, layout, layers, calibration, method, reconstruction): mean and sample std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        key = (
            record["ratio"] if record["method"] != "dense" else 0.0,
            record["layout"] if record["method"] != "dense" else "-",
            layers_of(record) if record["method"] != "dense" else "-",
            calibration_of(record) if record["method"] != "dense" else "-",
            record["method"],
            record["reconstruction"] if record["method"] != "dense" else "-",
        )
        groups.setdefault(key, []).append(record)
    rows = []
    for key in sorted(groups):
        runs = sorted(groups[key], key=lambda r: r["seed"])
        row = dict(zip(("ratio", "layout", "layers", "calibration", "method", "reconstruction"), key))
        row["seeds"] = [r["seed"] for r in runs]
        for text in TEXTS:
            values = [r["ppl"][text] for r in runs]
            row[text] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        row["prune_seconds"] = statistics.median(r["prune_seconds"] for r in runs)
        row["params"] = runs[0]["params"]
        rows.append(row)
    return rows


def _markdown(rows: list[dict]) -> str:
    lines = [
        "| ratio | layout | layers | calibration | method | reconstruction | seeds | params | "
        + " | ".join(f"{name} PPL" for name in TEXTS)
        + " | prune s |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(TEXTS) + "---|",
    ]
    for row in rows:
        several = len(row["seeds"]) > 1
        ppl = " | ".join(f"{row[t][0]:.1f}" + (f" ± {row[t][1]:.1f}" if several else "") for t in TEXTS)
        seeds = ",".join(map(str, row["seeds"]))
        lines.append(
            f"| {row['ratio']:.0%} | {row['layout']} | {row['layers']} | {row['calibration']} | {row['method']} | "
            f"{row['reconstruction']} | {seeds} | {row['params'] / 1e6:.1f}M | {ppl} | {row['prune_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = sorted({row["ratio"] for row in rows if row["ratio"]})
    dense = next((row for row in rows if row["method"] == "dense"), None)
    fig, axes = plt.subplots(1, len(ratios), figsize=(7 * len(ratios), 5), squeeze=False)
    for axis, ratio in zip(axes[0], ratios):
        subset = [row for row in rows if row["ratio"] == ratio and row["layout"] == "per_layer"]
        names = [
            f"{row['method']}\n{row['reconstruction']}" + layers_suffix(row["layers"], "per_layer", "\nlayers {}")
            for row in subset
        ]
        width = 0.8 / len(TEXTS)
        for offset, text in enumerate(TEXTS):
            positions = [i + offset * width for i in range(len(subset))]
            axis.bar(positions, [row[text][0] for row in subset], width, yerr=[row[text][1] for row in subset],
                     label=text, capsize=2)  # fmt: skip
            if dense:
                axis.axhline(dense[text][0], linestyle="--", linewidth=0.8, color=f"C{offset}")
        axis.set_xticks([i + width for i in range(len(subset))], names, rotation=60, fontsize=7)
        axis.set_yscale("log")
        axis.set_ylabel("perplexity (log scale; dashed: dense)")
        axis.set_title(f"SmolLM2-135M, {ratio:.0%} removed, per_layer, no training")
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def paired_accuracy(records: list[dict], baseline: str = "flap") -> list[dict]:
    """Every pruned run's accuracy minus `baseline`'s (any reconstruction of it), item by item, same ratio, layout,
    calibration and seed, on the items both scored."""
    scored = [r for r in records if r.get("zero_shot") and r["method"] != "dense"]
    rows = []
    for ours in scored:
        for theirs in scored:
            same = all(ours[k] == theirs[k] for k in ("ratio", "layout", "seed", "calibration", "samples"))
            if not same or layers_of(ours) != layers_of(theirs) or theirs["method"] != baseline or ours is theirs:
                continue
            limit = min(ours["zero_shot_limit"], theirs["zero_shot_limit"])
            pair = tuple({t: {"items": {"acc": r["zero_shot"][t]["items"]["acc"][:limit]}} for t in PAPER_TASKS}
                         for r in (ours, theirs))  # fmt: skip
            rows.append(
                {
                    "ratio": ours["ratio"],
                    "layout": ours["layout"],
                    "seed": ours["seed"],
                    "calibration": calibration_of(ours),
                    "run": run_label(ours),
                    "baseline": f"{theirs['method']}:{theirs['reconstruction']}",
                    **paired_difference([pair]),
                }
            )
    return sorted(rows, key=lambda row: (row["ratio"], row["layout"], row["seed"], row["run"]))


def _accuracy_markdown(records: list[dict], paired: list[dict]) -> str:
    scored = sorted((r for r in records if r.get("zero_shot")), key=lambda r: (r["ratio"] if r["method"] != "dense"
                    else 0, r["method"], r["reconstruction"], r["seed"]))  # fmt: skip
    if not scored:
        return ""
    lines = [
        "| ratio | layers | calibration | method | reconstruction | seed | items/task | "
        + " | ".join(PAPER_TASKS)
        + " | average acc |",
        "|---|---|---|---|---|---|---|" + "---|" * len(PAPER_TASKS) + "---|",
    ]
    for r in scored:
        tasks = " | ".join(f"{100 * r['zero_shot'][t]['acc']:.1f}" for t in PAPER_TASKS)
        dense = r["method"] == "dense"
        ratio, layers, calibration = (
            ("0%", "-", "-") if dense else (f"{r['ratio']:.0%}", layers_of(r), calibration_of(r))
        )
        lines.append(
            f"| {ratio} | {layers} | {calibration} | {r['method']} | {r['reconstruction']} | {r['seed']} | "
            f"{r['zero_shot_limit']} | {tasks} | {100 * r['zero_shot']['average']['acc']:.2f} |"
        )
    if paired:
        lines += [
            "",
            "Paired against FLAP on the same items (points; ± standard error of the paired difference):",
            "",
            "| ratio | layout | seed | calibration | run | baseline | discordant items | average acc diff | "
            "without BoolQ |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in paired:
            lines.append(
                f"| {row['ratio']:.0%} | {row['layout']} | {row['seed']} | {row['calibration']} | {row['run']} | "
                f"{row['baseline']} | "
                f"{row['discordant_items']} | **{row['average_diff']:+.2f} ± {row['standard_error']:.2f}** | "
                f"{row['without_boolq_diff']:+.2f} ± {row['without_boolq_standard_error']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def write_report(args: argparse.Namespace) -> None:
    records = [json.loads(path.read_text()) for path in sorted(Path(args.results).glob("*.json"))]
    rows = summarise(records)
    paired = paired_accuracy(records)
    summary = {"perplexity": rows, "paired_accuracy": paired}
    (ROOT / "benchmarks" / "results" / "compensation.json").write_text(json.dumps(summary, indent=1) + "\n")
    _plot(rows, ROOT / "docs" / "results_compensation.png")
    table = _markdown(rows)
    accuracy = _accuracy_markdown(records, paired)
    if accuracy:
        table += "\nZero-shot accuracy (lm-eval `acc`, first items of each validation split):\n\n" + accuracy
    path = ROOT / "docs" / "results_compensation.md"
    text = path.read_text() if path.exists() else f"{BEGIN}\n{END}\n"
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    path.write_text(text[:start] + "\n" + table + text[end:])
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_HUB_ID)
    parser.add_argument("--runs", nargs="+", default=["dense", "element1:none", "element1:least_squares"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.2])
    parser.add_argument("--layouts", nargs="+", default=["per_layer"], choices=["per_layer", "uniform"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--calibration", default="mix", choices=["mix", "novels"])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument(
        "--layers", nargs=2, type=int, metavar=("START", "END"), help="decoder layers to prune (default: the library's)"
    )
    parser.add_argument(
        "--drift",
        type=float,
        default=HyWIAConfig().reconstruction_drift,
        help="reconstruction_drift of least-squares runs (default: the library's)",
    )
    parser.add_argument("--eval-windows", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--models", default=str(MODELS), help="saved models")
    parser.add_argument("--accuracy-limit", type=int, default=0, help="zero-shot items per task (0: none)")
    parser.add_argument("--batch-size", type=int, default=16, help="lm-eval batch size")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    logging.set_verbosity_error()
    if args.report:
        write_report(args)
    else:
        run_matrix(args)


if __name__ == "__main__":
    main()
