"""How many groups each slot keeps against which ones: selections mixed from two sources, by hard masks.

From ONE set of gradient statistics (the calibration windows of `benchmarks/quality.py` at `--seed`) and one trained
fusion, each selection takes every slot's kept *count* from one source and the *ranking* inside the slot, per group
kind, from another ("counts / attention ranking / MLP ranking"); sources are the single estimators and `fused` (the
trained blend's fused score). Every selection is applied as hard group masks (equal to physical removal) and scored
against the dense model, as `benchmarks/domain_gap.py` does, on the calibration windows, on held-out LAMBADA windows
and on spread Wikipedia windows: KL (nats per token) and perplexity. `select` is the shipped choice
(`fusion_ranking="select"`, importance/ranking.py).

    .venv/bin/python benchmarks/count_vs_ranking.py --ratio 0.2 --seed 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from domain_gap import compare, texts
from quality import calibration_and_recovery_text
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from optimum_hywia import HyWIAConfig
from optimum_hywia.allocation import plan_pruning, select_groups
from optimum_hywia.architectures import get_architecture
from optimum_hywia.data import prepare_calibration_data
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.groups import build_group_sets, decoder_layers
from optimum_hywia.importance.estimators import gradient_scores
from optimum_hywia.importance.fusion import HybridFusion
from optimum_hywia.importance.masking import group_masks
from optimum_hywia.importance.ranking import choose_rankings, hard_masks, rank_slots
from optimum_hywia.importance.statistics import GradientStatistics

RESULTS = Path(__file__).resolve().parent / "results"
SELECTIONS = (
    "element1/element1/element1",
    "element2/element2/element2",
    "fused/fused/fused",
    "fused/fused/element1",
    "fused/fused/element2",
    "fused/element2/element2",
    "element2/element2/element1",
    "element1/element1/element2",
    "select",
)


class Masked(nn.Module):
    """The model with hard group masks applied in every forward pass."""

    def __init__(self, model: nn.Module, group_sets, kept: dict):
        super().__init__()
        self.model, self.group_sets = model, group_sets
        self.masks = hard_masks(group_sets, kept)

    def forward(self, **kwargs):
        with group_masks(self.group_sets, self.masks):
            return self.model(**kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_HUB_ID)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--selections", nargs="+", default=list(SELECTIONS))
    parser.add_argument("--heldout-windows", type=int, default=32)
    parser.add_argument("--wiki-windows", type=int, default=32)
    args = parser.parse_args()
    logging.set_verbosity_error()
    output = RESULTS / f"count_vs_ranking_r{args.ratio:g}_s{args.seed}.json"
    results = json.loads(output.read_text()) if output.exists() else {"command": "benchmarks/count_vs_ranking.py"}

    name_or_path, kwargs, _ = model_source(args.model)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs).eval()
    config = HyWIAConfig(pruning_ratio=args.ratio, layout="per_layer", seed=args.seed)
    spec = get_architecture(model.config.model_type)
    num_layers = len(decoder_layers(model, spec)[1])
    all_sets = build_group_sets(model, spec, range(num_layers), ("attention", "mlp"))
    sets = build_group_sets(model, spec, range(*config.resolve_layer_range(num_layers)), ("attention", "mlp"))
    plan = plan_pruning(config, spec, model.config, sets, sum(gs.num_groups * gs.params_per_group for gs in all_sets))
    calibration, _ = calibration_and_recovery_text()
    samples = prepare_calibration_data(
        calibration, tokenizer, config.num_calibration_samples, config.calibration_sequence_length, args.seed
    )
    batches = list(torch.split(samples, config.calibration_batch_size))
    statistics = GradientStatistics(sets)
    statistics.collect(model, batches, show_progress=False)
    estimates = {name: gradient_scores(name, statistics) for name in ("element1", "element2", "vector")}
    fusion = HybridFusion(
        sets, [estimates["element1"], estimates["element2"]], estimates["vector"], plan, num_layers, seed=args.seed
    )
    fused = fusion.train(
        model, batches, config.fusion_steps, config.fusion_learning_rate, config.fusion_temperature, False
    ).scores
    sources = {**estimates, "fused": fused}
    windows = texts(tokenizer, args.seed, config.num_calibration_samples, args.heldout_windows, args.wiki_windows)

    for name in args.selections:
        if name in results:
            continue
        if name == "select":
            choice = choose_rankings(model, batches, sets, plan, fused, estimates, show_progress=False)
            scores, extra = choice.scores, {"chosen": choice.chosen, "ranking_losses": choice.losses}
        else:
            counts, attention, mlp = name.split("/")
            if counts != "fused" and "fused" in (attention, mlp):
                raise SystemExit(f"{name}: the fused ranking goes with the fused counts only (fused/.../...).")
            count_scores = sources[counts]
            if counts != "fused":  # single estimates compete across slots by importance per parameter
                count_scores = {gs.key: count_scores[gs.key] / gs.params_per_group for gs in sets}
            scores = rank_slots(sets, count_scores, sources, {"attention": attention, "mlp": mlp})
            extra = {}
        kept = select_groups(scores, sets, plan)
        masked = Masked(model, sets, kept)
        record = {text: compare(model, {name: masked}, ids, 4)[name] for text, ids in windows.items()}
        record["kept"] = {k: sum(len(kept[gs.key]) for gs in sets if gs.kind == k) for k in ("attention", "mlp")}
        results[name] = {**record, **extra}
        output.write_text(json.dumps(results, indent=1) + "\n")
        print(
            f"r{args.ratio:g} s{args.seed} {name:<28} kept {record['kept']}  "
            + "  ".join(f"{text} KL {record[text]['kl']:.4f} PPL {record[text]['ppl']:.2f}" for text in windows),
            flush=True,
        )


if __name__ == "__main__":
    main()
