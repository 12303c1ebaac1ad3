"""Wall time and peak memory of pruning SmolLM2-135M: the lean gradient statistics against the full-gradient reference.

Each measurement runs in its own subprocess, so its peak RSS is its own. The peak is the process's high-water mark
(`VmHWM`) reset with `/proc/self/clear_refs` once the model is loaded, i.e. the peak *of pruning*, the loaded fp32
model included:

- `floor`: the fp32 model plus the activations of one calibration batch: a forward/backward pass in which no weight
  requires a gradient (only the activations do). The issue's target for the lean path is within 1.5x of it;
- `lean <importance>`: `HyWIAPruner.prune` as shipped (hooks fold each gradient into per-row sums and free it);
- `reference <importance>`: the same run with `GradientStatistics` replaced by `FullGradientStatistics` (every
  parameter's full gradient plus full-size signed/absolute/squared accumulators, reduced at the end).

    nice -n 5 .venv/bin/python benchmarks/prune_cost.py --samples 32 --sequence-length 512

Results (with the command line) go to `benchmarks/results/prune_cost.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from compensation import save_results

RESULTS = Path(__file__).parent / "results" / "prune_cost.json"
TESTS = Path(__file__).resolve().parents[1] / "tests"  # tests/reference_statistics.py: the full-gradient reference

MEASURE = r"""
import json, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging
logging.set_verbosity_error()
from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.data import lambada_texts, prepare_calibration_data, smollm2_gguf

kind, importance, samples, length, batch, fusion_steps = sys.argv[1:7]
samples, length, batch, fusion_steps = int(samples), int(length), int(batch), int(fusion_steps)


def high_water_mark() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


folder, gguf_file = smollm2_gguf()
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32).eval()
model_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
ids = prepare_calibration_data(lambada_texts(), tokenizer, num_samples=samples, sequence_length=length, seed=0)
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset VmHWM: from here on it is the peak of the measured work
rss_loaded = high_water_mark()
start = time.perf_counter()
report = {}
if kind == "floor":
    ids = ids[:batch]
    for param in model.parameters():
        param.requires_grad_(False)
    embeddings = model.get_input_embeddings()
    embeddings.register_forward_hook(lambda module, args, output: output.requires_grad_(True))
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
else:
    options = {}
    if kind == "lean-checkpointed":
        options = dict(calibration_micro_batch_size=1, gradient_checkpointing=True)
    if kind == "reference":  # tests/reference_statistics.py, on PYTHONPATH (see `measure`)
        import optimum_hywia.importance.statistics
        from reference_statistics import FullGradientStatistics
        optimum_hywia.importance.statistics.GradientStatistics = FullGradientStatistics  # looked up per run
    config = HyWIAConfig(
        pruning_ratio=0.2, importance=importance, num_calibration_samples=samples, calibration_sequence_length=length,
        calibration_batch_size=batch, fusion_steps=fusion_steps, check_memory=False, **options,
    )
    pruner = HyWIAPruner(model, config)
    pruner.prune(calibration_data=ids, show_progress=False)
    report = {"phase_seconds": pruner.report.seconds, "kept_groups": pruner.report.kept_groups}
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_bytes": high_water_mark(), "loaded_bytes": rss_loaded,
                  "model_bytes": model_bytes, **report}))
"""


def measure(kind: str, importance: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        "-c",
        MEASURE,
        kind,
        importance,
        str(args.samples),
        str(args.sequence_length),
        str(args.batch_size),
        str(args.fusion_steps),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} {importance} failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    measured["process_seconds"] = time.perf_counter() - start
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fusion-steps", type=int, default=4, help="hywia fusion steps (the default config: 16)")
    parser.add_argument("--importance", nargs="*", default=["element2", "hywia"])
    parser.add_argument(
        "--kinds",
        nargs="*",
        default=["lean", "reference"],
        help="also: lean-checkpointed (micro-batches of 1 row and gradient checkpointing)",
    )
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()

    results: dict = {"command": " ".join(sys.argv), "settings": vars(args), "measurements": {}}
    same = ("samples", "sequence_length", "batch_size", "fusion_steps")
    if Path(args.output).exists():  # measurements of the same settings are reused: the matrix can run in pieces
        previous = json.loads(Path(args.output).read_text())
        if all(previous["settings"][key] == getattr(args, key) for key in same):
            results["measurements"] = previous["measurements"]
            results["command"] = previous["command"] + " ; " + results["command"]
    runs = [("floor", "-")] + [(kind, imp) for imp in args.importance for kind in args.kinds]
    for kind, importance in runs:
        name = kind if kind == "floor" else f"{kind} {importance}"
        if name in results["measurements"]:
            continue
        measured = measure(kind, importance, args)
        results["measurements"][name] = measured
        save_results(Path(args.output), results)  # partial results survive an interrupted run
        print(
            f"{name:<22} {measured['seconds']:8.1f} s   peak {measured['peak_bytes'] / 2**20:8.0f} MiB",
            flush=True,
        )
    floor = results["measurements"]["floor"]["peak_bytes"]
    ratios = {}
    for importance in args.importance:
        if f"reference {importance}" not in results["measurements"]:
            continue
        if f"lean-checkpointed {importance}" in results["measurements"]:
            checkpointed = results["measurements"][f"lean-checkpointed {importance}"]
            reference = results["measurements"][f"reference {importance}"]
            ratios[f"{importance} checkpointed"] = {
                "reference_over_lean_checkpointed_peak": reference["peak_bytes"] / checkpointed["peak_bytes"],
                "lean_checkpointed_over_floor_peak": checkpointed["peak_bytes"] / floor,
                "same_kept_groups": checkpointed["kept_groups"] == reference["kept_groups"],
            }
        if f"lean {importance}" not in results["measurements"]:
            continue
        lean = results["measurements"][f"lean {importance}"]
        reference = results["measurements"][f"reference {importance}"]
        same = lean["kept_groups"] == reference["kept_groups"]
        ratios[importance] = {
            "reference_over_lean_peak": reference["peak_bytes"] / lean["peak_bytes"],
            "lean_over_floor_peak": lean["peak_bytes"] / floor,
            "reference_over_lean_gradient_seconds": reference["phase_seconds"]["gradients"]
            / lean["phase_seconds"]["gradients"],
            "reference_over_lean_total_seconds": reference["phase_seconds"]["total"] / lean["phase_seconds"]["total"],
            "lean_over_floor_peak_above_loaded": (lean["peak_bytes"] - lean["loaded_bytes"])
            / (results["measurements"]["floor"]["peak_bytes"] - results["measurements"]["floor"]["loaded_bytes"]),
            "same_kept_groups": same,
        }
        print(f"{importance}: {json.dumps(ratios[importance])}", flush=True)
    results["ratios"] = ratios
    save_results(Path(args.output), results)


if __name__ == "__main__":
    main()
