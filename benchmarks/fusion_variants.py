"""Fusion ablation from ONE set of gradient statistics: baselines, fixed blends and the learned blend, by perplexity.

All variants share the calibration windows, the gradient statistics and the parameter budget (`--layout`);
each selection is applied as hard 0/1 group masks on the dense model, which equals physical removal exactly (see
tests/test_pruner.py), so the only difference between rows is how groups are ranked. Reported: Wikipedia
perplexity (20 × 512 tokens), the calibration loss of the masked model, and how many attention groups / MLP channels
each ranking keeps (the layer-wise allocation it implies).

    .venv/bin/python benchmarks/fusion_variants.py --seed 0 --ratio 0.2 --variants element1 element2 vector hywia
    .venv/bin/python benchmarks/fusion_variants.py --seed 0 --ratio 0.5 --variants element1 element2 vector hywia

Variants: the three estimators alone; `fixed<alpha>` (a fixed fine/coarse blend, the fine weight shared by the fine
estimates) and `hywia` (the learned blend of element1, element2 and vector, trained on the default distillation
objective: the shipped method), the latter two with optional suffixes `-e1` (element1 as the only fine estimate)
and `-lm` (fusion trained on the causal-LM loss instead of the distillation objective). The `-geo` (geometric blend)
and `-ste` (straight-through masks) variants of docs/method.md were measured earlier; their `HybridFusion` options
have since left the package, so this script no longer runs them (their results stay in `results/fusion_variants_v1/`).

Results of the first formulation (one fine estimate whose level set every slot's; commit b15a844) are kept in
`results/fusion_variants_v1/`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_hywia import HyWIAConfig
from optimum_hywia.allocation import plan_pruning, select_groups
from optimum_hywia.architectures import get_architecture
from optimum_hywia.data import lambada_texts, prepare_calibration_data, wikipedia_texts
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.evaluation import perplexity
from optimum_hywia.groups import build_group_sets, decoder_layers
from optimum_hywia.importance.estimators import gradient_scores
from optimum_hywia.importance.fusion import HybridFusion
from optimum_hywia.importance.masking import group_masks
from optimum_hywia.importance.statistics import GradientStatistics

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_HUB_ID)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--variants", nargs="+", default=["element1", "element2", "vector", "fixed0.5", "hywia"])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", default="per_layer", choices=["per_layer", "uniform"])
    args = parser.parse_args()
    layout = "" if args.layout == "per_layer" else f"_{args.layout}"
    output = RESULTS / f"fusion_variants_r{args.ratio:g}_s{args.seed}{layout}.json"
    results = json.loads(output.read_text()) if output.exists() else {}

    name_or_path, kwargs, _ = model_source(args.model)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs).eval()
    config = HyWIAConfig(pruning_ratio=args.ratio, layout=args.layout, num_calibration_samples=args.samples)
    spec = get_architecture(model.config.model_type)
    num_layers = len(decoder_layers(model, spec)[1])
    all_sets = build_group_sets(model, spec, range(num_layers), ("attention", "mlp"))
    sets = build_group_sets(model, spec, range(*config.resolve_layer_range(num_layers)), ("attention", "mlp"))
    total = sum(gs.num_groups * gs.params_per_group for gs in all_sets)
    plan = plan_pruning(config, spec, model.config, sets, total)
    samples = prepare_calibration_data(lambada_texts(), tokenizer, args.samples, 128, args.seed)
    batches = list(torch.split(samples, config.calibration_batch_size))
    statistics = GradientStatistics(sets)
    statistics.collect(model, batches, show_progress=False)
    estimates = {name: gradient_scores(name, statistics) for name in ("element1", "element2", "vector")}
    evaluation_text = "\n\n".join(wikipedia_texts())

    def evaluate(name: str, scores: dict, extra: dict) -> None:
        kept = select_groups(scores, sets, plan)
        masks = {}
        for group_set in sets:
            mask = torch.zeros(group_set.num_groups)
            mask[kept[group_set.key]] = 1
            masks[group_set.key] = mask
        with group_masks(sets, masks), torch.no_grad():
            ppl = perplexity(model, tokenizer, evaluation_text, 512, max_windows=20, show_progress=False)
            loss = sum(model(input_ids=b, labels=b).loss.item() for b in batches) / len(batches)
        kept_count = {kind: sum(len(kept[gs.key]) for gs in sets if gs.kind == kind) for kind in ("attention", "mlp")}
        results[name] = {"wiki_ppl": ppl, "calibration_loss": loss, "kept": kept_count, **extra}
        output.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{args.ratio:g} {name:<12} PPL {ppl:9.2f}  calibration loss {loss:.3f}  kept {kept_count}", flush=True)

    for variant in args.variants:
        if variant in results:
            continue
        start = time.perf_counter()
        if variant in estimates:
            per_layer = args.layout == "per_layer"  # groups of different sizes compete: rank by score per parameter
            scores = {gs.key: estimates[variant][gs.key] / (gs.params_per_group if per_layer else 1) for gs in sets}
            evaluate(variant, scores, {})
            continue
        parts = variant.split("-")
        fixed = float(parts[0].removeprefix("fixed")) if parts[0].startswith("fixed") else None
        if (fixed is None and parts[0] != "hywia") or not set(parts[1:]) <= {"e1", "lm"}:
            raise SystemExit(
                f"Unknown variant {variant!r}: element1, element2, vector, or fixed<alpha> / hywia with optional "
                "suffixes -e1 (element1 as the only fine estimate), -lm (LM-loss objective)."
            )
        fusion = HybridFusion(
            sets,
            [estimates["element1"], *([] if "e1" in parts else [estimates["element2"]])],
            estimates["vector"],
            plan,
            num_layers,
            fixed_alpha=fixed,
            objective="lm" if "lm" in parts else "distillation",
        )
        result = fusion.train(model, batches, config.fusion_steps, 0.05, (1.0, 0.05), show_progress=False)
        alpha = {f"{layer}.{kind}": [round(x, 3) for x in a] for (layer, kind), a in result.alpha.items()}
        evaluate(variant, result.scores, {"alpha": alpha, "seconds": time.perf_counter() - start})


if __name__ == "__main__":
    main()
