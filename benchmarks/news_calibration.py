"""A news share in calibration: is element1's 20% news lead over element2's selection a calibration-domain effect?

The offline calibration mix holds novels and Wikipedia only; the third evaluation text, news (gensim's
`lee_background.cor`), is absent from it. gensim also ships `lee.cor`: 50 other news articles of the same source
(none of them in `lee_background.cor`). Here calibration is every 128-token window of `lee.cor` (39) plus the rest of
256 windows drawn from the offline mix (`--seed`), shuffled; each `--importance` prunes SmolLM2-135M-Instruct
`per_layer` by `--ratio` with its own selection and the default compensation (no choice between selections). Scored
on the reported windows (20 × 512 tokens per evaluation text) and, per window, on the fresh windows of
`benchmarks/paired_perplexity.py`, paired against each other and against `--against` runs already there.

    .venv/bin/python benchmarks/news_calibration.py --importance element2 element1 --ratio 0.2 --seed 0 \
        --against element1-least_squares+drift0.25+fobs-per_layer-r0.2-s0-mix256x128-layers0-30

Results: `benchmarks/results/news_calibration.json` (finished runs are kept, so it resumes).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from compensation import save_results
from paired_perplexity import RESULTS as PAIRED_RESULTS
from paired_perplexity import fresh_windows, report
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.data import prepare_calibration_data
from optimum_hywia.data.assets import asset_dir
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.data.text_sources import calibration_mix, evaluation_texts
from optimum_hywia.evaluation import perplexity, window_losses

RESULTS = Path(__file__).resolve().parent / "results" / "news_calibration.json"
NEWS_CALIBRATION = "gensim/test/test_data/lee.cor"
SAMPLES, LENGTH = 256, 128


def calibration_rows(tokenizer, seed: int) -> tuple[torch.Tensor, int]:
    """Every `lee.cor` window plus offline-mix windows up to `SAMPLES`, shuffled; and the number of news windows."""
    text = (asset_dir("gensim") / NEWS_CALIBRATION).read_text(encoding="utf-8", errors="replace")
    articles = [line.strip() for line in text.splitlines() if line.strip()]
    news = prepare_calibration_data(articles, tokenizer, num_samples=None, sequence_length=LENGTH)
    mix = prepare_calibration_data(calibration_mix(), tokenizer, SAMPLES - len(news), LENGTH, seed=seed)
    rows = torch.cat([mix, news])
    return rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))], len(news)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--importance", nargs="+", default=["element2", "element1"])
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--against", nargs="*", default=[], help="runs of paired_perplexity.json to pair with")
    args = parser.parse_args()
    logging.set_verbosity_error()
    name_or_path, kwargs, _ = model_source(SMOLLM2_HUB_ID)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    dense = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs).eval()
    rows, news = calibration_rows(tokenizer, args.seed)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    fresh = fresh_windows(tokenizer, 40)
    keys = []
    for importance in args.importance:
        key = f"{importance}-r{args.ratio:g}-s{args.seed}-mix{len(rows) - news}+leecor{news}"
        keys.append(key)
        if key in results:
            continue
        config = HyWIAConfig(
            pruning_ratio=args.ratio, layout="per_layer", seed=args.seed, importance=importance, selection_candidates=()
        )
        model = copy.deepcopy(dense)
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        pruner = HyWIAPruner(model, config, tokenizer)
        pruner.prune(calibration_data=rows, show_progress=False)
        seconds = time.perf_counter() - start
        results[key] = {
            "importance": importance,
            "ratio": args.ratio,
            "seed": args.seed,
            "calibration": f"{len(rows) - news} windows of the offline mix + {news} of {NEWS_CALIBRATION}",
            "achieved_ratio": pruner.report.achieved_ratio,
            "prune_seconds": seconds,
            "reported_ppl": {
                name: perplexity(model, tokenizer, text, sequence_length=512, max_windows=20, show_progress=False)
                for name, text in evaluation_texts().items()
            },
            "fresh_losses": {name: window_losses(model, w, show_progress=False) for name, w in fresh.items()},
        }
        save_results(RESULTS, results)
        print(key, {name: round(value, 2) for name, value in results[key]["reported_ppl"].items()}, flush=True)
    paired = {key: results[key]["fresh_losses"] for key in keys}
    if args.against:
        saved = json.loads(PAIRED_RESULTS.read_text())
        paired.update({run: saved[run] for run in args.against})
    report(paired, list(paired))


if __name__ == "__main__":
    main()
