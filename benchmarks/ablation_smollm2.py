"""Ablation on the real SmolLM2-135M-Instruct: HyWIA's learned fusion against its parts and a fixed even blend.

Every method prunes the same model with the same calibration windows (LAMBADA) and the same budget; perplexity is
measured on Wikipedia windows (disjoint text). Results go to `benchmarks/results/ablation_smollm2.json`.

    .venv/bin/python benchmarks/ablation_smollm2.py --ratio 0.2 --layout per_layer
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.data import lambada_texts, smollm2_gguf, wikipedia_texts
from optimum_hywia.evaluation import perplexity

METHODS = {
    "element1": dict(importance="element1"),
    "vector": dict(importance="vector"),
    "hywia (even blend, no training)": dict(importance="hywia", fusion_steps=0),
    "hywia (learned)": dict(importance="hywia"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--layout", default="per_layer", choices=["uniform", "per_layer"])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--eval-windows", type=int, default=20)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "ablation_smollm2.json"))
    args = parser.parse_args()

    folder, gguf_file = smollm2_gguf()
    evaluation_text = "\n\n".join(wikipedia_texts())
    calibration = lambada_texts()
    output = Path(args.output)
    results = json.loads(output.read_text()) if output.exists() else {}
    for name in args.methods:
        key = f"{name} | {args.ratio} | {args.layout} | {args.samples}"
        if key in results:
            continue  # cached: the matrix can be run in pieces
        config = HyWIAConfig(
            pruning_ratio=args.ratio, layout=args.layout, num_calibration_samples=args.samples, **METHODS[name]
        )
        pruner = HyWIAPruner.from_pretrained(folder, config=config, gguf_file=gguf_file)
        start = time.perf_counter()
        pruner.prune(calibration_data=calibration, show_progress=False)
        seconds = time.perf_counter() - start
        ppl = perplexity(
            pruner.model,
            pruner.tokenizer,
            evaluation_text,
            sequence_length=512,
            max_windows=args.eval_windows,
            show_progress=False,
        )
        results[key] = {
            "method": name,
            "ratio": args.ratio,
            "layout": args.layout,
            "samples": args.samples,
            "params": pruner.report.params_after,
            "wiki_ppl": ppl,
            "prune_seconds": seconds,
            "fusion_alpha": pruner.report.fusion_alpha,
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2))
        print(
            f"{name:<34} params {pruner.report.params_after:>12,}  wiki PPL {ppl:8.2f}  ({seconds:.0f} s)", flush=True
        )


if __name__ == "__main__":
    main()
