"""The compensated choice between whole selections, replayed on saved candidates (docs/method.md §7b).

`HyWIAPruner` with `selection_candidates=("element2",)` compensates HyWIA's selection and element2's own and keeps the
one whose compensated model has the lower KL to the dense model on held-out calibration windows
(`optimum_hywia.selection`). Both candidates are exactly the models `benchmarks/compensation.py` saves for
`hywia:least_squares` and `element2:least_squares` at the same ratio and seed (same statistics, plan, compensation:
tests/test_selection.py), so the choice can be replayed on them with the pruner's own windows and loss, in minutes
instead of a whole prune; where the pipeline itself ran (`hywia+element2:least_squares`), its recorded losses must
equal the replay's.

    .venv/bin/python benchmarks/selection_replay.py --ratios 0.2 0.5 --seeds 0 1 2

`--samples` and `--candidates` replay other settings and candidates: each candidate is a saved run's key with
`{ratio}` and `{seed}` left open, named by its method (the key's first field, or `NAME=KEY`), and `--pipeline` names
the pipeline's own run for its recorded losses. The pipeline races its candidates (a clearly worse one stops after a
few chunks), so a recorded loss may cover only the first chunks; the replay reads every chunk for every candidate.

    .venv/bin/python benchmarks/selection_replay.py --samples 256 --ratios 0.5 --seeds 0 \
        --candidates element2-least_squares+drift0.25+fobs-per_layer-r{ratio}-s{seed}-mix256x128-layers0-30 \
        vector-least_squares+drift0.25+fobs-per_layer-r{ratio}-s{seed}-mix256x128-layers0-30 \
        --pipeline hywia+element2-least_squares+drift0.25+fobs-per_layer-r{ratio}-s{seed}-mix256x128-layers0-30

Results: `benchmarks/results/selection_replay.json` (the losses, the choice, and the chosen model's held-out
perplexity from the compensation records).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compensation import MODELS, RESULTS, save_results
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from optimum_hywia import HyWIAConfig
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.data.text_sources import calibration_mix
from optimum_hywia.importance.statistics import TeacherCache
from optimum_hywia.modeling import load_pruned_model
from optimum_hywia.scoring import held_out_batches
from optimum_hywia.selection import calibration_kl

OUTPUT = Path(__file__).resolve().parent / "results" / "selection_replay.json"
OLD_RUN = "least_squares-per_layer-r{ratio}-s{seed}-mix128x128"  # the runs first replayed (128 windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=128, help="calibration windows of the replayed runs")
    parser.add_argument("--candidates", nargs="+", default=[f"{m}-{OLD_RUN}" for m in ("hywia", "element2")])
    parser.add_argument("--pipeline", default=f"hywia+element2-{OLD_RUN}", help="the pipeline's run (its losses)")
    args = parser.parse_args()
    logging.set_verbosity_error()
    results = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else {}
    name, kwargs, _ = model_source(SMOLLM2_HUB_ID)
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    dense = AutoModelForCausalLM.from_pretrained(name, **kwargs).eval()
    texts = calibration_mix()
    named = [c.split("=", 1) if "=" in c else (c.split("-")[0], c) for c in args.candidates]
    methods = [method for method, _ in named]
    suffix = "" if args.samples == 128 else f"-mix{args.samples}x128-" + ",".join(methods)
    for ratio in args.ratios:
        for seed in args.seeds:
            key = f"r{ratio:g}-s{seed}{suffix}"
            if key in results:
                continue
            config = HyWIAConfig(
                pruning_ratio=ratio,
                layout="per_layer",
                seed=seed,
                reconstruction="least_squares",
                num_calibration_samples=args.samples,
                calibration_sequence_length=128,
            )
            batches = held_out_batches(dense, config, tokenizer, texts)
            teacher = TeacherCache(8 << 30)
            record = {"held_out": [len(batches), list(batches[0].shape)], "losses": {}, "ppl": {}}
            for method, candidate in named:
                run = candidate.format(ratio=f"{ratio:g}", seed=seed)
                model = load_pruned_model(MODELS / run).eval()
                record["losses"][method] = calibration_kl(model, dense, teacher, batches)
                record["ppl"][method] = json.loads((RESULTS / f"{run}.json").read_text())["ppl"]
            record["chosen"] = min(record["losses"], key=record["losses"].get)  # a tie keeps the first
            pipeline = RESULTS / (args.pipeline.format(ratio=f"{ratio:g}", seed=seed) + ".json")
            if pipeline.exists():
                ran = json.loads(pipeline.read_text())
                record["pipeline"] = {"selection": ran["selection"], "losses": ran["selection_losses"]}
            results[key] = record
            print(key, record["losses"], record["chosen"], record.get("pipeline"), flush=True)
            save_results(OUTPUT, results)


if __name__ == "__main__":
    main()
