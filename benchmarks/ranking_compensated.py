"""Should HyWIA's ranking choice see compensated layers? (issue 19, item 4)

The shipped ranking choice (`fusion_ranking="select"`, importance/ranking.py) compares candidate rankings inside
slots -- the fused score or one single estimate, per group kind, MLP first -- by the calibration objective of the
*hard-masked* model, i.e. before compensation; the pruned model is then compensated (`reconstruction=
"least_squares"`). This benchmark runs the same coordinate-wise choice with every candidate pruned *and compensated*
first, and records for every candidate its compensated calibration objectives (KL to the dense model on the
calibration batches: what a compensated choice would minimise; and the LM loss there), its held-out perplexity (the
reported texts of `benchmarks/compensation.py`) and its perplexity on development windows no reported result reads
(`development_texts`). From one gradient pass and one fusion training (the pruner's own, same calibration
batches and seed), so the fused counts are those of the shipped run.

    .venv/bin/python benchmarks/ranking_compensated.py --ratio 0.2 --seed 0

Results: `benchmarks/results/ranking_compensated_r<ratio>_s<seed>.json` (resumable: finished candidates are kept).
`--saved element1 hywia ...` adds the compensated calibration objective of the models `benchmarks/compensation.py`
saved for this ratio and seed (`<method>-least_squares-per_layer-...`), e.g. to compare element1's own counts.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from compensation import MODELS, evaluation_texts
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from optimum_hywia import HyWIAConfig
from optimum_hywia.allocation import plan_pruning, select_groups
from optimum_hywia.architectures import get_architecture
from optimum_hywia.compensation import remove_and_compensate
from optimum_hywia.data import lambada_texts, wikipedia_texts
from optimum_hywia.data.models import SMOLLM2_HUB_ID, model_source
from optimum_hywia.data.text_sources import HELDOUT_LAMBADA, calibration_mix, news_texts
from optimum_hywia.evaluation import perplexity
from optimum_hywia.groups import build_group_sets, decoder_layers
from optimum_hywia.importance.estimators import gradient_scores
from optimum_hywia.importance.methods import HyWIA
from optimum_hywia.importance.ranking import FUSED, KIND_ORDER, choose_rankings, rank_slots
from optimum_hywia.importance.registry import ScoringContext
from optimum_hywia.importance.statistics import cached_teacher
from optimum_hywia.modeling import load_pruned_model
from optimum_hywia.scoring import calibration_batches
from optimum_hywia.surgery import layer_widths, rewrite_config

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def calibration_objectives(model, dense_log_probs: list[torch.Tensor], batches: list[torch.Tensor]) -> dict:
    """Means over the calibration tokens of KL(p_dense || p_model) (what the ranking choice minimises) and of the
    next-token cross-entropy (the LM loss)."""
    kl = lm = 0.0
    for teacher, batch in zip(dense_log_probs, batches):
        student = model(input_ids=batch, use_cache=False).logits.float().log_softmax(-1)
        kl += float(
            torch.nn.functional.kl_div(student, teacher.float(), reduction="none", log_target=True).sum(-1).mean()
        )
        lm += float(torch.nn.functional.nll_loss(student[:, :-1].flatten(0, 1), batch[:, 1:].flatten()))
    return {"compensated_kl": kl / len(batches), "compensated_lm": lm / len(batches)}


def development_texts(tokenizer, reported_windows: int, windows: int = 10) -> dict[str, torch.Tensor]:
    """Token ids of `windows` 512-token windows per domain that neither calibration nor any reported result reads:
    Wikipedia and news right after the reported windows, novels from the second half of the LAMBADA passages
    without the held-out ones (calibration takes the first half)."""
    passages = lambada_texts()
    sources = {
        "wikipedia": ("\n\n".join(wikipedia_texts()[: len(wikipedia_texts()) // 2]), reported_windows),
        "novels": ("\n\n".join(passages[len(passages) // 2 : -HELDOUT_LAMBADA]), 0),
        "news": ("\n\n".join(news_texts()), reported_windows),
    }
    streams = {}
    for name, (text, skip) in sources.items():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][skip * 512 : (skip + windows) * 512]
        if len(ids) < windows * 512:
            raise SystemExit(f"{name}: {len(ids)} tokens after the reported windows, fewer than {windows} windows")
        streams[name] = torch.tensor(ids, dtype=torch.long)
    return streams


def development_ppl(model, development: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        name: perplexity(model, None, ids, sequence_length=512, show_progress=False)
        for name, ids in development.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_HUB_ID)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-windows", type=int, default=20)
    parser.add_argument("--saved", nargs="*", default=[], help="methods whose saved compensation runs to score")
    args = parser.parse_args()
    logging.set_verbosity_error()
    output = RESULTS / f"ranking_compensated_r{args.ratio:g}_s{args.seed}.json"
    results = json.loads(output.read_text()) if output.exists() else {}
    results.setdefault("command", f"benchmarks/ranking_compensated.py --ratio {args.ratio:g} --seed {args.seed}")
    results.setdefault("calibration", "mix 128x128 (optimum_hywia.data.text_sources.calibration_mix)")
    results.setdefault("evaluation", f"{args.eval_windows} x 512-token windows of Wikipedia / novels / news")
    candidates_done = results.setdefault("candidates", {})

    name_or_path, kwargs, _ = model_source(args.model)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    dense = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs).eval()
    config = HyWIAConfig(
        pruning_ratio=args.ratio,
        layout="per_layer",
        seed=args.seed,
        reconstruction="least_squares",
        num_calibration_samples=128,
        calibration_sequence_length=128,
        fusion_ranking="fused",
    )
    spec = get_architecture(dense.config)
    num_layers = len(decoder_layers(dense, spec)[1])
    layer_range = range(*config.resolve_layer_range(num_layers))
    all_sets = build_group_sets(dense, spec, range(num_layers), ("attention", "mlp"))
    sets = build_group_sets(dense, spec, layer_range, config.group_kinds)
    total = sum(gs.num_groups * gs.params_per_group for gs in all_sets)
    plan = plan_pruning(config, spec, spec.widths_config(dense.config), sets, total)
    batches = calibration_batches(dense, config, tokenizer, calibration_mix())
    widths_before = layer_widths(dense, spec)
    with torch.no_grad():
        teacher = [dense(input_ids=batch, use_cache=False).logits.log_softmax(-1).bfloat16() for batch in batches]
    if args.saved:
        saved = results.setdefault("saved_runs", {})
        development = development_texts(tokenizer, args.eval_windows)
        for method in args.saved:
            key = f"{method}-least_squares-per_layer-r{args.ratio:g}-s{args.seed}-mix128x128"
            record = json.loads((RESULTS / "compensation" / f"{key}.json").read_text())
            model = load_pruned_model(MODELS / key).eval()
            saved[key] = {**calibration_objectives(model, teacher, batches), "ppl": record["ppl"]}
            saved[key]["development_ppl"] = development_ppl(model, development)
            output.write_text(json.dumps(results, indent=1) + "\n")
            print(f"{key}: {saved[key]}", flush=True)
        return

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    context = ScoringContext(dense, spec, config, sets, plan, num_layers, batches, False, {})
    fused, _ = HyWIA().score(context)
    statistics = context.gradient_statistics()
    estimates = {name: gradient_scores(name, statistics) for name in (*config.fine_estimators, "vector")}
    print(f"gradients + fusion: {time.perf_counter() - start:.0f} s", flush=True)
    if "uncompensated_choice" not in results:
        with cached_teacher(1 << 34):
            choice = choose_rankings(dense, batches, sets, plan, fused, estimates, show_progress=False)
        results["uncompensated_choice"] = {"chosen": choice.chosen, "losses": choice.losses}
        output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"uncompensated choice: {results['uncompensated_choice']['chosen']}", flush=True)

    texts = evaluation_texts()
    development = development_texts(tokenizer, args.eval_windows)

    def measure(chosen: dict[str, str]) -> dict:
        key = "/".join(f"{kind}={chosen[kind]}" for kind in KIND_ORDER)
        if key in candidates_done:
            return candidates_done[key]
        kept = select_groups(rank_slots(sets, fused, estimates, chosen), sets, plan)
        model = copy.deepcopy(dense)
        model_sets = build_group_sets(model, spec, layer_range, config.group_kinds)
        begin = time.perf_counter()
        remove_and_compensate(model, spec, config, model_sets, kept, batches, widths_before, show_progress=False)
        rewrite_config(model, spec, widths_before)
        record = calibration_objectives(model, teacher, batches)
        record["ppl"] = {
            name: perplexity(
                model, tokenizer, text, sequence_length=512, max_windows=args.eval_windows, show_progress=False
            )
            for name, text in texts.items()
        }
        record["development_ppl"] = development_ppl(model, development)
        record["seconds"] = time.perf_counter() - begin
        candidates_done[key] = record
        output.write_text(json.dumps(results, indent=1) + "\n")
        ppl = " ".join(f"{name} {value:.2f}" for name, value in record["ppl"].items())
        ppl += "  dev " + " ".join(f"{name} {value:.2f}" for name, value in record["development_ppl"].items())
        objectives = f"KL {record['compensated_kl']:.4f} LM {record['compensated_lm']:.4f}"
        print(f"{key:<36} {objectives}  {ppl}  ({record['seconds']:.0f} s)", flush=True)
        return record

    chosen = dict.fromkeys(KIND_ORDER, FUSED)
    for kind in KIND_ORDER:
        losses = {name: measure({**chosen, kind: name})["compensated_kl"] for name in (FUSED, *estimates)}
        chosen[kind] = min(losses, key=losses.get)
    results["compensated_choice"] = chosen
    shipped = results["uncompensated_choice"]["chosen"]
    results["shipped_candidate"] = measure(shipped)
    output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"compensated choice: {chosen}; shipped (uncompensated) choice: {shipped}", flush=True)


if __name__ == "__main__":
    main()
