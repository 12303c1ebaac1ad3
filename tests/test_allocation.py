"""Budgets: uniform widths the vanilla config accepts, per-layer global ranking, round_to, impossible ratios."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from optimum_hywia import HyWIAConfig
from optimum_hywia.allocation import plan_pruning, select_groups
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
    assert plan.kept_groups["attention"] == 4 and plan.vanilla_config
    _, plan, _ = _plan(model, pruning_ratio=0.35, layout="uniform")
    assert plan.kept_groups["attention"] == 4 and plan.vanilla_config  # 5.2 heads: 4 is valid, the MLP makes up
    _, plan, _ = _plan(model, kinds=("attention",), pruning_ratio=0.2, layout="uniform", group_kinds=("attention",))
    assert plan.kept_groups["attention"] == 5 and not plan.vanilla_config  # attention alone: exactly 4.6 -> 5


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
