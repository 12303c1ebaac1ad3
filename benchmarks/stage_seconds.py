"""Prune cost of one method at 20% per_layer + least squares (wall and CPU seconds per stage), and whether its kept
groups equal those of the model `benchmarks/compensation.py` saved for the same run.

    .venv/bin/python benchmarks/stage_seconds.py hywia 1
    .venv/bin/python benchmarks/stage_seconds.py element1 1

Run the methods interleaved and repeated on an otherwise idle machine; compare medians
(docs/results_compensation.md).
"""

import argparse
import json
import resource
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.data.assets import cache_root
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.data.text_sources import calibration_mix


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method")
    parser.add_argument("seed", type=int)
    args = parser.parse_args()
    logging.set_verbosity_error()
    name, kwargs, _ = model_source(SMOLLM2_HUB_ID)
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs).eval()
    torch.manual_seed(args.seed)
    config = HyWIAConfig(
        pruning_ratio=0.2,
        layout="per_layer",
        seed=args.seed,
        importance=args.method,
        reconstruction="least_squares",
        num_calibration_samples=128,
        calibration_sequence_length=128,
    )
    pruner = HyWIAPruner(model, config, tokenizer)
    cpu, start = cpu_seconds(), time.perf_counter()
    pruner.prune(calibration_data=calibration_mix(), show_progress=False)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    report = pruner.report
    stages = {key: round(value) for key, value in report.seconds.items()}
    print("seconds", stages, "wall", round(wall), "cpu", round(cpu))
    print("ranking batches", report.ranking_batches)
    print("selection", report.selection, report.selection_losses)
    method = args.method  # the shipped HyWIA (with the compensated choice) is `hywia+element2` in compensation.py
    if method == "hywia" and config.selection_candidates:
        method += "".join(f"+{name}" for name in config.selection_candidates)
    key = f"{method}-least_squares-per_layer-r0.2-s{args.seed}-mix128x128"
    saved = cache_root() / "benchmarks" / "compensation" / key / "hywia_report.json"
    if saved.exists():
        print("same kept groups as the saved run:", report.kept_groups == json.loads(saved.read_text())["kept_groups"])


if __name__ == "__main__":
    main()
