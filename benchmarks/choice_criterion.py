"""Does the compensated choice's criterion rank two saved models as perplexity does, domain by domain?

The choice between whole selections (`optimum_hywia.selection`) keeps the candidate whose compensated model has the
lowest `KL(p_dense ‖ p_pruned)` on held-out windows of the calibration text; results are perplexities on other text.
This benchmark scores two saved models of `benchmarks/compensation.py` (keys as its result files are named) and the
dense model on 512-token windows of each calibration domain (the calibration mix's novels and Wikipedia articles,
`calibration_mix`; windows evenly spaced, some may overlap calibration's own) and on the fresh evaluation windows of
`benchmarks/paired_perplexity.py` (none the reported results read). Per window it records the mean KL to the dense
model and the mean next-token loss; the report gives, per domain, the paired mean difference B − A of both with its
standard error: where they agree in sign, the choice's criterion is not what separates its choice from perplexity's.

    .venv/bin/python benchmarks/choice_criterion.py --runs KEY_A KEY_B --windows 20

Results: `benchmarks/results/choice_criterion.json` (per-window values per run; finished runs are kept).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch
from compensation import MODELS, save_results
from paired_perplexity import fresh_windows
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.data.text_sources import lambada_texts, wikipedia_texts
from optimum_hywia.evaluation.perplexity import token_windows
from optimum_hywia.modeling import load_pruned_model

RESULTS = Path(__file__).resolve().parent / "results" / "choice_criterion.json"


def calibration_domain_windows(tokenizer, windows: int) -> dict[str, torch.Tensor]:
    """`windows` 512-token windows per calibration domain, evenly spaced over the text the mix draws it from
    (`calibration_mix`: the first half of the LAMBADA passages, articles of the Wikipedia dump's second half)."""
    passages, articles = lambada_texts(), wikipedia_texts()
    texts = {
        "calibration wikipedia": "\n\n".join(articles[len(articles) // 2 :]),
        "calibration novels": "\n\n".join(passages[: len(passages) // 2]),
    }
    return {
        name: token_windows(torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"]), 512, windows, True)
        for name, text in texts.items()
    }


@torch.inference_mode()
def kl_and_loss(dense, models: dict, windows: torch.Tensor) -> dict[str, dict[str, list[float]]]:
    """Per model and window: mean `KL(p_dense ‖ p_model)` and mean next-token cross-entropy, in nats/token (the
    dense model's log-probabilities are computed once per window: at 49k-token vocabularies they are large)."""
    values = {name: {"kl": [], "loss": []} for name in models}
    for window in windows:
        reference = dense(input_ids=window[None], use_cache=False).logits[0, :-1].float().log_softmax(-1)
        for name, model in models.items():
            log_probs = model(input_ids=window[None], use_cache=False).logits[0, :-1].float().log_softmax(-1)
            values[name]["kl"].append(float((reference.exp() * (reference - log_probs)).sum(-1).mean()))
            values[name]["loss"].append(float(-log_probs.gather(-1, window[1:, None]).mean()))
    return values


def report(results: dict, runs: list[str]) -> None:
    a, b = runs
    print(f"B − A, nats/token (A = {a}, B = {b})")
    for domain in results[a]:
        line = f"  {domain:<24}"
        for measure in ("kl", "loss"):
            differences = [y - x for x, y in zip(results[a][domain][measure], results[b][domain][measure])]
            mean = statistics.mean(differences)
            error = statistics.stdev(differences) / math.sqrt(len(differences))
            line += f"  {measure} {mean:+.4f} ± {error:.4f} ({mean / error:+.1f} SE)"
        print(line + f"  ({len(differences)} windows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_HUB_ID, help="the dense model")
    parser.add_argument("--runs", nargs=2, required=True, help="two saved models under --models")
    parser.add_argument("--models", default=str(MODELS))
    parser.add_argument("--windows", type=int, default=20, help="windows per domain")
    args = parser.parse_args()
    logging.set_verbosity_error()
    name_or_path, kwargs, _ = model_source(args.model)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    windows = calibration_domain_windows(tokenizer, args.windows)
    windows.update({f"fresh {name}": w for name, w in fresh_windows(tokenizer, args.windows).items()})
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    counts = {domain: len(w) for domain, w in windows.items()}
    missing = [run for run in args.runs if {d: len(v["kl"]) for d, v in results.get(run, {}).items()} != counts]
    for run in missing:
        if not (Path(args.models) / run).is_dir():
            raise SystemExit(f"{run}: no saved model under {args.models}; prune it with benchmarks/compensation.py")
    if missing:
        dense = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs).eval()
        models = {run: load_pruned_model(Path(args.models) / run).eval() for run in missing}
        values = {domain: kl_and_loss(dense, models, w) for domain, w in windows.items()}
        for run in missing:
            results[run] = {domain: values[domain][run] for domain in windows}
        save_results(RESULTS, results)
    report(results, args.runs)


if __name__ == "__main__":
    main()
