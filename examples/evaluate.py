"""Evaluate a model folder (a HyWIA checkpoint of either layout, or any causal LM): Wikipedia perplexity and
zero-shot accuracy on the paper's tasks (lm-evaluation-harness task definitions, offline data).

    .venv/bin/python examples/evaluate.py outputs/smollm2-hywia-20 --tasks piqa arc_easy --limit 200
"""

from __future__ import annotations

import argparse
import json

from transformers import AutoTokenizer
from transformers.utils import logging

from optimum_hywia import load_pruned_model
from optimum_hywia.evaluation import PAPER_TASKS, evaluate_zero_shot, evaluation_text, perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved model folder")
    parser.add_argument("--tasks", nargs="*", default=list(PAPER_TASKS), choices=PAPER_TASKS)
    parser.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    parser.add_argument("--eval-windows", type=int, default=20, help="512-token Wikipedia windows")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    logging.set_verbosity_error()

    model = load_pruned_model(args.model).eval()  # no remote code needed, whatever the layout
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    text, name = evaluation_text("wikipedia")
    results = {"parameters": sum(p.numel() for p in model.parameters())}
    results["perplexity"] = perplexity(model, tokenizer, text, sequence_length=512, max_windows=args.eval_windows)
    if args.tasks:
        results["zero_shot"] = evaluate_zero_shot(model, tokenizer, tasks=args.tasks, limit=args.limit)

    print(f"\n{args.model}: {results['parameters']:,} parameters, {name} perplexity {results['perplexity']:.2f}")
    for task, row in results.get("zero_shot", {}).items():
        norm = f"   acc_norm {100 * row['acc_norm']:5.1f}" if "acc_norm" in row else ""
        print(f"  {task:<14} acc {100 * row['acc']:5.1f}{norm}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
