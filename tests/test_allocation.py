"""Budgets: uniform widths the vanilla config accepts, per-layer global ranking, round_to / head_round_to, impossible
ratios, and the achieved ratio the report gives after rounding."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import VOCAB, make_tiny_model, masked_logits

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.allocation import _rounded_counts, plan_pruning, select_groups
from optimum_hywia.architectures import get_architecture
from optimum_hywia.groups import build_group_sets

SPEC = get_architecture("llama")


def _plan(model, layers=range(4), kinds=("attention", "mlp"), **config):
    group_sets = build_group_sets(model, SPEC, layers, kinds)
    all_sets = build_group_sets(model, SPEC, range(model.config.num_hidden_layers), ("attention", "mlp"))
    total = sum(gs.num_groups * gs.params_per_group for gs in all_sets)
    return group_sets, plan_pruning(HyWIAConfig(**config), SPEC, model.config, group_sets, total), total


def test_group_sets_couple_a_kv_head_with_its_query_heads():
    model = make_tiny_model("llama-gqa")  # 8 heads, 2 KV heads, head_dim 8, hidden 64, MLP 96
    attention, mlp = build_group_sets(model, SPEC, range(1), ("attention", "mlp"))
    assert attention.num_groups == 2 and attention.units_per_group == {"q_heads": 4, "kv_heads": 1}
    # q: 32 rows x 64, k and v: 8 rows x 64, o: 32 columns x 64
    assert attention.params_per_group == (32 + 8 + 8) * 64 + 32 * 64
    assert mlp.num_groups == 96 and mlp.params_per_group == 3 * 64
    assert attention.indices(0, torch.tensor([1])).tolist() == list(range(32, 64))  # q rows of group 1
    assert attention.indices(1, torch.tensor([1])).tolist() == list(range(8, 16))  # k rows of KV head 1


def test_uniform_plan_chooses_head_counts_the_vanilla_config_accepts():
    model = make_tiny_model("llama-mha")  # 8 heads on hidden 64: valid kept counts are 1, 2, 4, 8
    _, plan, _ = _plan(model, pruning_ratio=0.45, layout="uniform")
    assert plan.kept_groups["attention"] == 4
    _, plan, _ = _plan(model, pruning_ratio=0.35, layout="uniform")
    assert plan.kept_groups["attention"] == 4  # 5.2 heads: 4 is valid, the MLP makes up
    assert plan.describe().startswith("uniform, remove ") and "attention 4" in plan.describe()
    _, plan, _ = _plan(model, kinds=("attention",), pruning_ratio=0.2, layout="uniform", group_kinds=("attention",))
    assert plan.kept_groups["attention"] == 5  # attention alone: exactly 4.6 -> 5, which no vanilla config describes


def test_uniform_plan_compensates_coarse_attention_steps_with_the_mlp():
    model = make_tiny_model("llama-gqa")
    group_sets, plan, total = _plan(model, pruning_ratio=0.3, layout="uniform")
    attention, mlp = group_sets[0], group_sets[1]
    removed_per_layer = (2 - plan.kept_groups["attention"]) * attention.params_per_group + (
        96 - plan.kept_groups["mlp"]
    ) * mlp.params_per_group
    assert abs(4 * removed_per_layer - 0.3 * total) <= mlp.params_per_group * 4


def test_round_to_is_honoured_in_both_layouts():
    model = make_tiny_model("llama-gqa")
    _, plan, _ = _plan(model, pruning_ratio=0.3, layout="uniform", round_to=16)
    assert plan.kept_groups["mlp"] % 16 == 0
    group_sets, plan, _ = _plan(model, pruning_ratio=0.3, layout="per_layer", round_to=16)
    scores = {gs.key: torch.rand(gs.num_groups, generator=torch.Generator().manual_seed(gs.layer)) for gs in group_sets}
    kept = select_groups(scores, group_sets, plan)
    assert all(len(kept[gs.key]) % 16 == 0 for gs in group_sets if gs.kind == "mlp")


def test_per_layer_removes_the_lowest_scores_globally():
    model = make_tiny_model("llama-gqa")
    group_sets, plan, _ = _plan(model, pruning_ratio=0.2, layout="per_layer", group_kinds=("mlp",))
    # layer 3's channels score lowest: it must lose more than the others
    scores = {gs.key: torch.full((gs.num_groups,), 1.0 + gs.layer) for gs in group_sets}
    scores[(3, "mlp")] = torch.linspace(0.01, 0.5, 96)
    kept = select_groups(scores, group_sets, plan)
    assert len(kept[(3, "mlp")]) < 96 and all(len(kept[(i, "mlp")]) == 96 for i in range(3))
    assert kept[(3, "mlp")].tolist() == list(range(96 - len(kept[(3, "mlp")]), 96))  # the highest scores stay


def test_impossible_ratios_get_a_clear_error():
    model = make_tiny_model("llama-gqa")
    with pytest.raises(ValueError, match="lower the ratio, widen layer_range, or add group kinds"):
        _plan(model, layers=range(1, 2), pruning_ratio=0.5, layout="per_layer")
    with pytest.raises(ValueError, match="round_to=128 is larger than layer 0's MLP width 96"):
        _plan(model, pruning_ratio=0.2, round_to=128)


# (builder, overrides): GQA with 4 KV heads of 2 query heads each (so head_round_to=2 leaves 2 or 4), and MHA
GQA_AND_MHA = {
    "gqa": ("llama-gqa", dict(num_key_value_heads=4)),
    "mha": ("llama-mha", {}),
}


def _count(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("layout", ["uniform", "per_layer"])
@pytest.mark.parametrize("family", list(GQA_AND_MHA))
def test_head_round_to_and_round_to_give_multiples_and_the_exact_achieved_ratio(family, layout):
    name, overrides = GQA_AND_MHA[family]
    model = make_tiny_model(name, **overrides)
    reference = copy.deepcopy(model)
    heads_per_group = reference.config.num_attention_heads // reference.config.num_key_value_heads
    config = HyWIAConfig(pruning_ratio=0.4, importance="l2", layout=layout, round_to=8, head_round_to=2)
    pruner = HyWIAPruner(model, config)
    pruned = pruner.prune(show_progress=False)
    report = pruner.report

    for layer in report.layers:
        before, after = layer["before"], layer["after"]
        kv_heads = after["num_key_value_heads"]
        assert kv_heads % 2 == 0 or kv_heads == before["num_key_value_heads"]
        assert after["num_attention_heads"] == kv_heads * heads_per_group  # query heads follow their KV groups
        assert after["intermediate_size"] % 8 == 0 or after["intermediate_size"] == before["intermediate_size"]
    kept = {key: len(indices) for key, indices in report.kept_groups.items()}
    assert any(kept[f"{layer}.attention"] < reference.config.num_key_value_heads for layer in range(4))  # heads pruned
    assert all(count % 2 == 0 for key, count in kept.items() if key.endswith("attention"))
    assert all(count % 8 == 0 for key, count in kept.items() if key.endswith("mlp"))

    probe = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        logits = pruned(probe).logits
    torch.testing.assert_close(logits, masked_logits(reference, pruner, probe), rtol=1e-5, atol=1e-5)

    # the reported sizes and ratio are those of the pruned model, after rounding
    assert report.params_before == _count(reference) and report.params_after == _count(pruned)
    removed = report.params_before - report.params_after
    assert report.decoder_params_before - report.decoder_params_after == removed
    assert report.achieved_ratio == pytest.approx(removed / report.decoder_params_before, rel=1e-12)
    assert abs(report.achieved_ratio - config.pruning_ratio) <= 0.05  # rounding keeps the budget close


def test_head_round_to_is_the_per_layer_minimum_too():
    model = make_tiny_model("llama-mha")  # 8 KV-head groups per layer
    group_sets, plan, total = _plan(
        model,
        kinds=("attention",),
        pruning_ratio=0.235,
        layout="per_layer",
        group_kinds=("attention",),
        head_round_to=4,
    )
    assert plan.min_groups["attention"] == 4
    scores = {gs.key: torch.rand(gs.num_groups, generator=torch.Generator().manual_seed(gs.layer)) for gs in group_sets}
    kept = select_groups(scores, group_sets, plan)
    assert [len(kept[gs.key]) for gs in group_sets] == [4, 4, 4, 4]  # the most the layers can give: half each
    with pytest.raises(ValueError, match=r"can give at most 32,768 \(23.5%\) while keeping 4 KV-head group\(s\) per"):
        _plan(
            model,
            kinds=("attention",),
            pruning_ratio=0.45,
            layout="per_layer",
            group_kinds=("attention",),
            head_round_to=4,
        )


def test_per_layer_rounding_keeps_the_budget_instead_of_adding_up_errors():
    model = make_tiny_model("llama-mha")
    group_sets, plan, _ = _plan(
        model, kinds=("mlp",), pruning_ratio=0.1, layout="per_layer", group_kinds=("mlp",), round_to=8
    )
    cost = group_sets[0].params_per_group
    plan.remove_params = 4 * 20 * cost  # 20 channels per layer: 96 - 20 = 76 is 4 from both 72 and 80
    counts = _rounded_counts(group_sets, [76, 76, 76, 76], plan)
    assert all(count in (72, 80) for count in counts) and sum(counts) == 4 * 76  # two down, two up


def test_bad_head_round_to_gets_a_clear_error():
    with pytest.raises(
        ValueError,
        match=r"head_round_to=4 is larger than layer 0's KV-head count 2: use a "
        r"head_round_to <= 2\.",
    ):
        _plan(make_tiny_model("llama-gqa"), pruning_ratio=0.2, head_round_to=4)
    # MHA with 8 heads on hidden 64: 3 and 6 heads are not a vanilla LlamaConfig, so uniform cannot use 3
    model = make_tiny_model("llama-mha")
    with pytest.raises(
        ValueError,
        match=r"head_round_to=3 leaves no pruned head count that a vanilla LlamaConfig "
        r"accepts.*use head_round_to in \[1, 2, 4\] \(KV-head groups\), or layout='per_layer'\.",
    ):
        _plan(model, pruning_ratio=0.3, layout="uniform", head_round_to=3)
    with pytest.raises(
        ValueError,
        match=r"pruning_ratio=0.03 cannot be met with layout='per_layer' \(only whole "
        r"KV-head groups \(multiples of head_round_to=4\) are removed; .* pruning_ratio 0.05882, lower "
        r"round_to / head_round_to, or add group kinds\.",
    ):
        _plan(
            model,
            kinds=("attention",),
            pruning_ratio=0.03,
            layout="per_layer",
            group_kinds=("attention",),
            head_round_to=4,
        )
    group_sets, plan, _ = _plan(model, pruning_ratio=0.3, layout="per_layer", head_round_to=3)
    scores = {gs.key: torch.rand(gs.num_groups, generator=torch.Generator().manual_seed(gs.layer)) for gs in group_sets}
    kept = select_groups(scores, group_sets, plan)
    assert all(len(kept[gs.key]) in (3, 6, 8) for gs in group_sets if gs.kind == "attention")
