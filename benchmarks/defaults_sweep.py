"""Calibration and compensation defaults, chosen on development windows (issue 19, item 3).

Prunes SmolLM2-135M-Instruct with one selection (`--importance`, default element2: the selection HyWIA's shipped
compensated choice keeps on every measured run), `per_layer`, once per variant of the defaults below (base: 128 ×
128 calibration tokens, least-squares compensation, layers 3..27, no drift correction: the library's defaults when
the sweep began), and scores each pruned model by
perplexity on 10 × 512-token development windows per domain that no reported result reads
(`ranking_compensated.development_texts`: Wikipedia and news right after the reported windows, LAMBADA passages of
the second half outside the held-out 500). Calibration: the offline mix (`calibration_mix`), seed = `--seed`.

    .venv/bin/python benchmarks/defaults_sweep.py --ratios 0.2 0.5 --variants base samples256 length256 ridge0.001

Results: `benchmarks/results/defaults_sweep.json`, one entry per (variant, ratio, seed); finished entries are kept,
so the sweep can be killed and rerun.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from compensation import calibration_texts, save_results
from ranking_compensated import development_ppl, development_texts
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source

RESULTS = Path(__file__).resolve().parent / "results" / "defaults_sweep.json"
# the library defaults when the sweep began (layers 3..27, no drift, no OBS): every variant states its changes
BASE = {
    "num_calibration_samples": 128,
    "calibration_sequence_length": 128,
    "reconstruction": "least_squares",
    "layer_range": (3, 28),
    "reconstruction_drift": 0.0,
    "reconstruction_reselect": False,
}
EVERY_LAYER = {"layer_range": (0, 30)}  # SmolLM2-135M's 30 decoder layers
# the library's defaults since 2026-12-05 (every layer, 256 windows, drift correction 0.25)
SHIPPED = {"num_calibration_samples": 256, **EVERY_LAYER, "reconstruction_drift": 0.25}
RIDGES = (0.003, 0.03, 0.1)
VARIANTS: dict[str, dict] = {
    "base": {},
    "samples32": {"num_calibration_samples": 32},
    "samples256": {"num_calibration_samples": 256},
    "samples512": {"num_calibration_samples": 512},
    "length256": {"calibration_sequence_length": 256},
    "ridge0.001": {"reconstruction_ridge": 0.001},
    "ridge0.1": {"reconstruction_ridge": 0.1},
    "layers-all": EVERY_LAYER,
    "layers-1-29": {"layer_range": (1, 29)},
    "samples256-layers-all": {"num_calibration_samples": 256, **EVERY_LAYER},
    "none": {"reconstruction": "none"},
    "none-layers-all": {"reconstruction": "none", **EVERY_LAYER},
    **{f"layers-all-drift{beta:g}": {**EVERY_LAYER, "reconstruction_drift": beta} for beta in (0.1, 0.25, 0.5, 1.0)},
    "samples256-layers-all-drift0.25": SHIPPED,
    "samples256-layers-all-drift0.25-obs": {
        **SHIPPED,
        "reconstruction_reselect": True,
        "reconstruction_reselect_damping": None,
    },
    **{
        f"samples256-layers-all-drift0.25-fobs{damping:g}": {
            **SHIPPED,
            "reconstruction_reselect": True,
            "reconstruction_reselect_damping": damping,
        }
        for damping in (0.01, 1.0)
    },
    **{f"samples256-layers-all-drift0.25-ridge{r:g}": {**SHIPPED, "reconstruction_ridge": r} for r in RIDGES},
    "samples256-layers-all-drift0.25-fobs0.01-steps2": {
        **SHIPPED,
        "reconstruction_reselect": True,
        "reconstruction_reselect_damping": 0.01,
        "pruning_steps": 2,
    },
    **{
        f"samples256-layers-all-drift0.25-obs-ridge{ridge:g}": {
            **SHIPPED,
            "reconstruction_reselect": True,
            "reconstruction_reselect_damping": None,
            "reconstruction_ridge": ridge,
        }
        for ridge in RIDGES
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_HUB_ID)
    parser.add_argument("--importance", default="element2")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--reported-windows", type=int, default=20, help="windows the reported results read")
    args = parser.parse_args()
    logging.set_verbosity_error()
    name_or_path, kwargs, description = model_source(args.model)
    print(f"model: {description}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    dense = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs).eval()
    development = development_texts(tokenizer, args.reported_windows)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "dense" not in results:
        results["dense"] = {"development_ppl": development_ppl(dense, development)}
    print("dense", results["dense"]["development_ppl"], flush=True)
    for ratio in args.ratios:
        for seed in args.seeds:
            for variant in args.variants:
                key = f"{args.importance}-{variant}-r{ratio:g}-s{seed}"
                if key in results:
                    continue
                overrides = {**BASE, **VARIANTS[variant]}
                config = HyWIAConfig(
                    pruning_ratio=ratio,
                    layout="per_layer",
                    seed=seed,
                    importance=args.importance,
                    selection_candidates=(),
                    **overrides,
                )
                model = copy.deepcopy(dense)
                torch.manual_seed(seed)
                start = time.perf_counter()
                pruner = HyWIAPruner(model, config, tokenizer)
                pruner.prune(calibration_data=calibration_texts("mix"), show_progress=False)
                seconds = time.perf_counter() - start
                results[key] = {
                    "importance": args.importance,
                    "variant": variant,
                    "overrides": {name: list(v) if isinstance(v, tuple) else v for name, v in overrides.items()},
                    "ratio": ratio,
                    "seed": seed,
                    "achieved_ratio": pruner.report.achieved_ratio,
                    "prune_seconds": seconds,
                    "development_ppl": development_ppl(model, development),
                }
                save_results(RESULTS, results)
                ppl = "  ".join(f"{name} {value:7.2f}" for name, value in results[key]["development_ppl"].items())
                print(f"{key:<36} {ppl}  ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
