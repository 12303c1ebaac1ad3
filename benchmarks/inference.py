"""Inference speed of pruned SmolLM2-135M against the dense model, next to the multiply-accumulate limit.

One run measures the dense model and models pruned by 20% and 50% with the `uniform` and `per_layer` layouts:
prefill and greedy-decode throughput at batch 1 and 8 (`optimum_hywia.evaluation.measure_throughput`, medians).
Next to every speed-up it prints the ratio of multiply-accumulates per token (dense / pruned: linear layers, LM head
and attention over the mean context), the speed-up a compute-bound kernel could reach, and the decode speed-up as a
fraction of that limit.

The pruned models use the `l2` importance: the benchmark is about the *structure* (which widths remain), not the
quality, and `l2` needs no calibration pass. Any other importance gives the same shapes, hence the same speed.

    taskset -c 1 .venv/bin/python benchmarks/inference.py --threads 1 --new-tokens 64 --repeats 7

Results (with the command line) go to `benchmarks/results/inference.json`.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.data import smollm2_gguf
from optimum_hywia.evaluation.throughput import measure_throughput

RESULTS = Path(__file__).parent / "results" / "inference.json"


def macs_per_token(model: torch.nn.Module, context: int) -> int:
    """Multiply-accumulates of one token: every linear layer (LM head included) plus attention over `context`."""
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 0
    for module in model.modules():
        if hasattr(module, "q_proj") and hasattr(module, "head_dim"):
            # scores q.k and the weighted sum of v: two head_dim-long products per query head and context position
            attention += 2 * module.q_proj.out_features * context
    return linear + attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", type=float, nargs="*", default=[0.2, 0.5])
    parser.add_argument("--layouts", nargs="*", default=["uniform", "per_layer"])
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; each round visits every model once")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)

    folder, gguf_file = smollm2_gguf()
    dense = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32).eval()
    context = args.prompt_length + args.new_tokens // 2
    models = {"dense": dense}
    for ratio in args.ratios:
        for layout in args.layouts:
            config = HyWIAConfig(pruning_ratio=ratio, layout=layout, importance="l2")
            pruner = HyWIAPruner(copy.deepcopy(dense), config)
            models[f"{layout} {ratio:.0%}"] = pruner.prune(show_progress=False)

    results: dict = {"command": " ".join(sys.argv), "settings": vars(args), "torch_threads": torch.get_num_threads()}
    rows = {}
    for name, model in models.items():
        params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        rows[name] = {"params": params, "macs_per_token": macs_per_token(model, context)}
    # Rounds visit every model in turn, so a slow spell of the machine hits all of them alike; medians over rounds.
    for batch_size in args.batch_sizes:
        timings: dict[str, list[dict[str, float]]] = {name: [] for name in models}
        for round_index in range(args.repeats):
            for name, model in models.items():
                timings[name].append(
                    measure_throughput(
                        model,
                        batch_size=batch_size,
                        prompt_length=args.prompt_length,
                        new_tokens=args.new_tokens,
                        repeats=1,
                        warmup=1 if round_index == 0 else 0,
                    )
                )
        for name, runs in timings.items():
            rows[name][f"batch {batch_size}"] = {
                **runs[0],
                **{
                    key: statistics.median(run[key] for run in runs)
                    for key in ("prefill_tokens_per_s", "decode_tokens_per_s")
                },
                "rounds": len(runs),
            }
    dense_row = rows["dense"]
    for name, row in rows.items():
        row["mac_limit_speedup"] = dense_row["macs_per_token"] / row["macs_per_token"]
        for batch_size in args.batch_sizes:
            key = f"batch {batch_size}"
            for phase in ("prefill", "decode"):
                speedup = row[key][f"{phase}_tokens_per_s"] / dense_row[key][f"{phase}_tokens_per_s"]
                row[key][f"{phase}_speedup"] = speedup
                row[key][f"{phase}_fraction_of_mac_limit"] = speedup / row["mac_limit_speedup"]
        line = f"{name:<14} params {row['params'] / 1e6:6.1f} M  MAC limit {row['mac_limit_speedup']:.2f}x"
        for batch_size in args.batch_sizes:
            key = f"batch {batch_size}"
            line += (
                f" | b{batch_size} prefill {row[key]['prefill_speedup']:.2f}x decode {row[key]['decode_speedup']:.2f}x"
                f" ({row[key]['decode_fraction_of_mac_limit']:.0%} of limit)"
            )
        print(line, flush=True)
    results["models"] = rows
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
