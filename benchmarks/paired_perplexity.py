"""Paired perplexity of saved pruned models on many fresh windows: are differences on the 20 reported windows real?

The reported results read the first 20 × 512-token windows of each evaluation text and the development windows the
next 10 (Wikipedia, news; novels come from other passages). This benchmark scores the saved models of
`benchmarks/compensation.py` (keys as its result files are named) on up to `--windows` windows per domain that no
result or decision has read: evenly spaced over the rest of each evaluation text (`evaluation_texts`, after the
first 30 windows). Per window it records the mean next-token loss; the report gives each model's perplexity on them
and, for every pair, the paired mean difference of the per-window losses with its standard error.

    .venv/bin/python benchmarks/paired_perplexity.py --runs KEY_A KEY_B --windows 200

Results: `benchmarks/results/paired_perplexity.json` (per-window losses per run; finished runs are kept).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from itertools import combinations
from pathlib import Path

import torch
from compensation import MODELS, save_results
from transformers import AutoTokenizer
from transformers.utils import logging

from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.data.text_sources import evaluation_texts
from optimum_hywia.evaluation import window_losses
from optimum_hywia.evaluation.perplexity import token_windows
from optimum_hywia.modeling import load_pruned_model

RESULTS = Path(__file__).resolve().parent / "results" / "paired_perplexity.json"
SKIP = 30  # the reported (20) and development (10) windows


def fresh_windows(tokenizer, windows: int) -> dict[str, torch.Tensor]:
    """Up to `windows` 512-token windows per domain, evenly spaced over each evaluation text after its first `SKIP`."""
    fresh = {}
    for name, text in evaluation_texts().items():
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        fresh[name] = token_windows(ids[SKIP * 512 :], 512, windows, spread=True)
    return fresh


def report(results: dict, runs: list[str]) -> None:
    for domain in next(iter(results.values())):
        print(f"{domain} ({len(results[runs[0]][domain])} windows)")
        for run in runs:
            print(f"  {run:<90} ppl {math.exp(statistics.mean(results[run][domain])):8.2f}")
        for a, b in combinations(runs, 2):
            differences = [x - y for x, y in zip(results[a][domain], results[b][domain])]
            mean = statistics.mean(differences)
            error = statistics.stdev(differences) / math.sqrt(len(differences))
            print(f"  {a[:40]} − {b[:40]}: {mean:+.4f} ± {error:.4f} nats/token ({mean / error:+.1f} SE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_HUB_ID, help="the dense model (its tokenizer)")
    parser.add_argument("--runs", nargs="+", required=True, help="saved models under --models")
    parser.add_argument("--models", default=str(MODELS))
    parser.add_argument("--windows", type=int, default=200)
    args = parser.parse_args()
    logging.set_verbosity_error()
    name_or_path, kwargs, _ = model_source(args.model)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    windows = fresh_windows(tokenizer, args.windows)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for run in args.runs:
        counts = {name: len(w) for name, w in windows.items()}
        if run in results and {name: len(v) for name, v in results[run].items()} == counts:
            continue
        folder = Path(args.models) / run
        if not folder.is_dir():
            raise SystemExit(f"{run}: no saved model under {folder}; prune it with benchmarks/compensation.py")
        model = load_pruned_model(folder).eval()
        results[run] = {name: window_losses(model, w, show_progress=False) for name, w in windows.items()}
        save_results(RESULTS, results)
    report(results, args.runs)


if __name__ == "__main__":
    main()
