"""Prune cost of one method with the shipped defaults (wall and CPU seconds per stage), and whether its kept groups
equal those of the model `benchmarks/compensation.py` saved for the same run.

    .venv/bin/python benchmarks/stage_seconds.py hywia 0 --ratio 0.2
    .venv/bin/python benchmarks/stage_seconds.py element1 0 --ratio 0.2

Every setting is the library's default but the method, the ratio and the seed: per_layer, the offline calibration mix
(256 × 128 tokens), least squares with drift correction and the OBS re-choice in the output Fisher's metric, and, for
HyWIA, the compensated choice between its selection and `selection_candidates`' (`--candidates` overrides them; none:
no choice). That is the run `compensation.py` labels `<method>:least_squares+fobs` (HyWIA:
`hywia+<candidate>+...`). Each measurement is appended to `benchmarks/results/stage_seconds.json`. Run the methods
interleaved and repeated on an otherwise idle machine; compare medians (docs/results_compensation.md). Until
2026-12-06 this script ran 20% with 128 windows and plain least squares (the defaults of the time; the older prune
costs in the docs).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from compensation import MODELS, save_results, with_drift
from compensation import run_key as compensation_key
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.data.calibration import DEFAULT_NUM_SAMPLES, DEFAULT_SEQUENCE_LENGTH
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.data.text_sources import calibration_mix

RESULTS = Path(__file__).resolve().parent / "results" / "stage_seconds.json"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method")
    parser.add_argument("seed", type=int)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--candidates", nargs="*", help="HyWIA's selection_candidates (default: the library's)")
    parser.add_argument("--saved", help="compare the kept groups with this saved run (default: the same run's key)")
    args = parser.parse_args()
    logging.set_verbosity_error()
    name, kwargs, _ = model_source(SMOLLM2_HUB_ID)
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs).eval()
    torch.manual_seed(args.seed)
    settings = {} if args.candidates is None else {"selection_candidates": tuple(args.candidates)}
    config = HyWIAConfig(
        pruning_ratio=args.ratio, layout="per_layer", seed=args.seed, importance=args.method, **settings
    )
    pruner = HyWIAPruner(model, config, tokenizer)
    cpu, start = cpu_seconds(), time.perf_counter()
    pruner.prune(calibration_data=calibration_mix(), show_progress=False)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    report, resolved = pruner.report, pruner.config
    method = args.method  # the shipped HyWIA is `hywia+<candidates>` in compensation.py
    if method == "hywia" and resolved.selection_candidates:
        method += "".join(f"+{candidate}" for candidate in resolved.selection_candidates)
    reselect = "+fobs" if resolved.reconstruction_reselect else ""  # on where the importance takes a gradient pass
    reconstruction = with_drift(f"least_squares{reselect}", resolved.reconstruction_drift)
    run = SimpleNamespace(
        calibration="mix",
        samples=resolved.num_calibration_samples or DEFAULT_NUM_SAMPLES,
        sequence_length=resolved.calibration_sequence_length or DEFAULT_SEQUENCE_LENGTH,
        layers=None,
    )
    key = compensation_key(method, reconstruction, args.ratio, "per_layer", args.seed, run)
    saved_key = args.saved or key
    saved = MODELS / saved_key / "hywia_report.json"
    record = {
        "key": key,
        "saved": saved_key,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": torch.get_num_threads(),
        "wall": round(wall, 1),
        "cpu": round(cpu, 1),
        "stages": {stage: round(seconds, 1) for stage, seconds in report.seconds.items()},
        "selection": report.selection,
        "selection_losses": report.selection_losses,
        "same_kept_groups_as_saved": (
            report.kept_groups == json.loads(saved.read_text())["kept_groups"] if saved.exists() else None
        ),
    }
    print(json.dumps(record, indent=1))
    records = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    save_results(RESULTS, [*records, record])


if __name__ == "__main__":
    main()
