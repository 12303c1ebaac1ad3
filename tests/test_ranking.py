"""The ranking inside slots: fused counts kept, groups re-ranked, the ranking chosen by hard-mask loss."""

from __future__ import annotations

import pytest
import torch
from conftest import arithmetic_sequences, make_tiny_model, make_trained_tiny_model

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.allocation import plan_pruning, select_groups
from optimum_hywia.architectures import get_architecture
from optimum_hywia.groups import build_group_sets
from optimum_hywia.importance import GradientStatistics, HybridFusion, gradient_scores, group_masks, ranking
from optimum_hywia.importance.ranking import choose_rankings, rank_slots, ranked_by
from optimum_hywia.importance.statistics import calibration_loss

SPEC = get_architecture("llama")
KINDS = ("attention", "mlp")


def test_ranked_by_keeps_the_values_and_follows_the_ranking():
    generator = torch.Generator().manual_seed(0)
    scores, ranking = torch.rand(50, generator=generator), torch.rand(50, generator=generator)
    reordered = ranked_by(scores, ranking)
    torch.testing.assert_close(reordered.sort().values, scores.sort().values)
    assert torch.equal(reordered.argsort(), ranking.argsort())


def _setup(layout: str, model=None, batches=None):
    model = model if model is not None else make_tiny_model("llama-gqa")
    batches = batches if batches is not None else list(torch.split(arithmetic_sequences(16, seed=1000), 4))
    group_sets = build_group_sets(model, SPEC, range(4), KINDS)
    statistics = GradientStatistics(group_sets)
    statistics.collect(model, batches, show_progress=False)
    estimates = {name: gradient_scores(name, statistics) for name in ("element1", "element2", "vector")}
    config = HyWIAConfig(pruning_ratio=0.4, layout=layout)
    total = sum(gs.num_groups * gs.params_per_group for gs in group_sets)
    plan = plan_pruning(config, SPEC, model.config, group_sets, total)
    fusion = HybridFusion(group_sets, [estimates["element1"], estimates["element2"]], estimates["vector"], plan, 4)
    with torch.no_grad():
        fused = {key: value.double() for key, value in fusion.scores().items()}  # the even blend
    return model, batches, group_sets, plan, estimates, fused


@pytest.mark.parametrize("layout", ["uniform", "per_layer"])
def test_ranked_slots_keep_the_fused_counts_and_their_best_groups(layout):
    _, _, group_sets, plan, estimates, fused = _setup(layout)
    by_fused = select_groups(fused, group_sets, plan)
    by_element2 = select_groups(rank_slots(group_sets, fused, estimates, {"mlp": "element2"}), group_sets, plan)
    assert any(len(by_fused[gs.key]) < gs.num_groups for gs in group_sets if gs.kind == "mlp")
    changed = 0
    for group_set in group_sets:
        kept = by_element2[group_set.key]
        assert len(kept) == len(by_fused[group_set.key])  # how many: the fused scores'
        if group_set.kind == "attention":  # not re-ranked
            assert torch.equal(kept, by_fused[group_set.key])
            continue
        best = estimates["element2"][group_set.key].topk(len(kept)).indices.sort().values
        assert torch.equal(kept, best)  # which: element2's best
        changed += not torch.equal(kept, by_fused[group_set.key])
    assert changed  # the re-ranking does change the selection somewhere


def _hard_loss(model, group_sets, plan, scores, batches) -> float:
    kept = select_groups(scores, group_sets, plan)
    masks = {}
    for group_set in group_sets:
        masks[group_set.key] = torch.zeros(group_set.num_groups)
        masks[group_set.key][kept[group_set.key]] = 1.0
    with torch.no_grad(), group_masks(group_sets, masks):
        return sum(float(calibration_loss(model, b, "distillation")) for b in batches) / len(batches)


def test_choose_rankings_takes_the_lowest_hard_mask_loss_and_never_a_reversed_ranking():
    """A trained model; the fused scores rank every slot in reverse of element1 (they keep the least important
    groups), and a fourth candidate does too. The choice must avoid both, take the candidate of lowest measured loss
    per kind, and report losses that are the hard-masked model's."""
    model, batches, group_sets, plan, estimates, fused = _setup(
        "per_layer", make_trained_tiny_model(), list(torch.split(arithmetic_sequences(16, seed=1000), 4))
    )
    reversed_element1 = {key: -value for key, value in estimates["element1"].items()}
    fused = rank_slots(group_sets, fused, {"reversed": reversed_element1}, {kind: "reversed" for kind in KINDS})
    candidates = {**estimates, "reversed": reversed_element1}
    choice = choose_rankings(model, batches, group_sets, plan, fused, candidates, "distillation", show_progress=False)
    assert set(choice.chosen) == set(KINDS) and set(choice.losses["mlp"]) == {"fused", *candidates}
    for kind in KINDS:
        assert choice.chosen[kind] not in ("fused", "reversed")
        assert choice.losses[kind][choice.chosen[kind]] == min(choice.losses[kind].values())
    assert choice.losses["mlp"]["reversed"] == choice.losses["mlp"]["fused"]  # the same selection, measured once
    measured = _hard_loss(model, group_sets, plan, choice.scores, batches)
    assert measured == pytest.approx(choice.losses["attention"][choice.chosen["attention"]], rel=1e-6)
    assert measured < _hard_loss(model, group_sets, plan, fused, batches)


def test_the_race_drops_clearly_worse_candidates_early_and_chooses_as_the_full_evaluation(monkeypatch):
    """With 16 one-window batches, a reversed ranking is dropped after a few batches while the winner sees them all;
    the choice, and the loss of every candidate measured on all batches, are those of evaluating every candidate on
    every batch."""
    batches = list(torch.split(arithmetic_sequences(16, seed=1000), 1))
    model, batches, group_sets, plan, estimates, fused = _setup("per_layer", make_trained_tiny_model(), batches)
    candidates = {**estimates, "reversed": {key: -value for key, value in estimates["element1"].items()}}
    raced = choose_rankings(model, batches, group_sets, plan, fused, candidates, "distillation", show_progress=False)
    monkeypatch.setattr(ranking, "RACE_Z", 1e9)  # nothing is ever dropped
    full = choose_rankings(model, batches, group_sets, plan, fused, candidates, "distillation", show_progress=False)
    assert raced.chosen == full.chosen
    for key, value in raced.scores.items():
        assert torch.equal(value, full.scores[key])
    for kind in KINDS:
        assert full.batches[kind] == {name: 16 for name in ("fused", *candidates)}
        assert raced.batches[kind][raced.chosen[kind]] == 16
        for name, seen in raced.batches[kind].items():
            if seen == 16:
                assert raced.losses[kind][name] == pytest.approx(full.losses[kind][name], rel=1e-12)
    # MLP groups hold the budget here: a reversed MLP ranking is far worse, dropped after the first batches
    assert ranking.RACE_MIN_BATCHES <= raced.batches["mlp"]["reversed"] < 16
    assert raced.losses["mlp"]["reversed"] > 2 * raced.losses["mlp"][raced.chosen["mlp"]]


def _prune(ranking: str, token_batch):
    config = HyWIAConfig(
        pruning_ratio=0.4, layout="per_layer", num_calibration_samples=8, calibration_sequence_length=16,
        calibration_batch_size=4, fusion_steps=2, layer_range=(0, 4), fusion_ranking=ranking,
        reconstruction_reselect=False,  # the ranking, not OBS, decides which groups of a layer go
        selection_candidates=(),  # nor the compensated choice between whole selections
    )  # fmt: skip
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), config)
    pruner.prune(token_batch, show_progress=False)
    return pruner.report


def test_the_pruner_records_the_ranking_and_honours_a_fixed_one(token_batch):
    selected = _prune("select", token_batch)
    assert set(selected.fusion_ranking) == set(KINDS) and "ranking" in selected.seconds
    for kind, name in selected.fusion_ranking.items():
        losses = selected.ranking_losses[kind]
        assert set(losses) == {"fused", "element1", "element2", "vector"} and losses[name] == min(losses.values())
    fused, element2 = _prune("fused", token_batch), _prune("element2", token_batch)
    assert fused.fusion_ranking == {} and fused.ranking_losses == {}
    assert element2.fusion_ranking == {"attention": "element2", "mlp": "element2"}
    for key, kept in element2.kept_groups.items():  # the fused counts, element2's groups
        assert len(kept) == len(fused.kept_groups[key])
    assert element2.kept_groups != fused.kept_groups


def test_a_fixed_ranking_must_be_an_estimate_hywia_computes():
    with pytest.raises(ValueError, match="add it to fine_estimators"):
        HyWIAConfig(fusion_ranking="element2", fine_estimators=("element1",))
    with pytest.raises(ValueError, match="fusion_ranking must be one of"):
        HyWIAConfig(fusion_ranking="l2")
