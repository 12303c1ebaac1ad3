"""Does a pruned model's quality carry from the calibration text to other text? One table per ratio and seed.

Each method prunes SmolLM2 through the pruner exactly as `benchmarks/quality.py` does (the same calibration windows
per seed: 32 × 128 tokens of the first half of the LAMBADA passages), and every pruned model is then scored against
the dense model on three texts:

- `calibration`: the calibration windows themselves, what HyWIA's fusion was trained to preserve;
- `heldout`: LAMBADA windows from the second half of the passages (same domain, text calibration never saw);
- `wikipedia`: 512-token windows evenly spaced over the gensim Wikipedia dump (the perplexity text of the quality
  benchmark: another domain).

On each: the KL divergence from the dense model's next-token distributions (nats per token, the fusion's objective)
and the perplexity. A method that is better on `heldout` but worse on `wikipedia` generalises within the
calibration domain but not across domains.

    .venv/bin/python benchmarks/domain_gap.py --ratio 0.2 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import torch
from quality import METHODS, calibration_and_recovery_text
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.data import prepare_calibration_data, wikipedia_texts
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.evaluation.perplexity import token_windows

RESULTS = Path(__file__).resolve().parent / "results"


def texts(tokenizer, seed: int, samples: int, heldout_windows: int, wiki_windows: int) -> dict[str, torch.Tensor]:
    calibration, heldout = calibration_and_recovery_text()
    wiki = tokenizer("\n\n".join(wikipedia_texts()), add_special_tokens=False)["input_ids"]
    return {
        "calibration": prepare_calibration_data(calibration, tokenizer, samples, 128, seed),
        "heldout": prepare_calibration_data(heldout, tokenizer, heldout_windows, 128, seed),
        "wikipedia": token_windows(torch.tensor(wiki), 512, wiki_windows, spread=True),
    }


@torch.no_grad()
def compare(dense, pruned: dict[str, torch.nn.Module], windows: torch.Tensor, batch_size: int) -> dict[str, dict]:
    """KL(dense || pruned) and perplexity of every pruned model on `windows`, the dense pass shared."""
    sums = {name: {"kl": 0.0, "nll": 0.0} for name in ["dense", *pruned]}
    tokens = 0
    for batch in torch.split(windows, batch_size):
        teacher = dense(input_ids=batch, use_cache=False).logits[:, :-1].float().log_softmax(-1)
        targets = batch[:, 1:].unsqueeze(-1)
        tokens += targets.numel()
        sums["dense"]["nll"] -= float(teacher.gather(-1, targets).sum())
        for name, model in pruned.items():
            student = model(input_ids=batch, use_cache=False).logits[:, :-1].float().log_softmax(-1)
            sums[name]["kl"] += float((teacher.exp() * (teacher - student)).sum())
            sums[name]["nll"] -= float(student.gather(-1, targets).sum())
    return {name: {"kl": s["kl"] / tokens, "ppl": math.exp(s["nll"] / tokens)} for name, s in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_HUB_ID)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", default=["element1", "element2", "vector", "hywia"])
    parser.add_argument("--samples", type=int, default=32, help="calibration windows (as in quality.py)")
    parser.add_argument("--heldout-windows", type=int, default=64)
    parser.add_argument("--wiki-windows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    logging.set_verbosity_error()
    name_or_path, kwargs, _ = model_source(args.model)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    dense = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs).eval()
    calibration, _ = calibration_and_recovery_text()
    for seed in args.seeds:
        output = RESULTS / f"domain_gap_r{args.ratio:g}_s{seed}.json"
        if output.exists():
            continue
        pruned = {}
        for method in args.methods:
            config = HyWIAConfig(
                pruning_ratio=args.ratio,
                layout="per_layer",
                seed=seed,
                num_calibration_samples=args.samples,
                **METHODS[method],
            )
            model = copy.deepcopy(dense)
            HyWIAPruner(model, config, tokenizer).prune(calibration_data=calibration, show_progress=False)
            pruned[method] = model.eval()
        windows = texts(tokenizer, seed, args.samples, args.heldout_windows, args.wiki_windows)
        result = {"ratio": args.ratio, "seed": seed, "windows": {k: list(v.shape) for k, v in windows.items()}}
        for text, ids in windows.items():
            result[text] = compare(dense, pruned, ids, args.batch_size)
            for method, value in result[text].items():
                print(f"r{args.ratio:g} s{seed} {text:<12} {method:<10} KL {value['kl']:.4f}  PPL {value['ppl']:8.2f}")
        output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
