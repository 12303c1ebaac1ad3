"""Activation statistics and the Wanda-sp baseline (`importance="wanda_sp"`), for every supported family."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch
import transformers
from conftest import VOCAB, make_tiny_model, masked_logits
from test_families import FAMILIES, LAYERS, _tiny_bert, make_family_model, save_baichuan_checkpoint, tiny_config
from transformers.pytorch_utils import Conv1D

from optimum_hywia import HyWIAPruner
from optimum_hywia.architectures import get_architecture
from optimum_hywia.commands.arguments import add_prune_arguments
from optimum_hywia.groups import build_group_sets, decoder_layers
from optimum_hywia.importance import ActivationStatistics, activation_scores, group_masks, importance_names

KINDS = ("attention", "mlp")
CALIBRATION = torch.randint(3, VOCAB, (8, 24), generator=torch.Generator().manual_seed(1))
INPUTS = torch.randint(3, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))


def _group_sets(model):
    spec = get_architecture(model.config)
    return build_group_sets(model, spec, range(len(decoder_layers(model, spec)[1])), KINDS)


def _collect(model, batches, **options) -> ActivationStatistics:
    group_sets = _group_sets(model)
    statistics = ActivationStatistics(group_sets)
    statistics.collect(model, batches, show_progress=False, **options)
    return statistics


def _captured_squared_norms(model, batches) -> dict[str, torch.Tensor]:
    """Reference: keep every input of the input-sliced projections (a forward hook of our own), then reduce."""
    captured: dict[str, list[torch.Tensor]] = {}
    handles = []
    for group_set in _group_sets(model):
        for projection in group_set.projections:
            if projection.spec.dim == "in":

                def keep(module, inputs, output, name=projection.name):
                    captured.setdefault(name, []).append(inputs[0].detach().clone())

                handles.append(projection.module.register_forward_hook(keep))
    try:
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch)
    finally:
        for handle in handles:
            handle.remove()
    return {
        name: sum(x.double().square().sum(dim=tuple(range(x.ndim - 1))) for x in inputs)
        for name, inputs in captured.items()
    }


@pytest.mark.parametrize("family", list(FAMILIES))
def test_activation_norms_equal_the_captured_inputs(family):
    model = make_family_model(family)
    batches = list(torch.split(CALIBRATION, 4))
    statistics = _collect(model, batches)
    expected = _captured_squared_norms(model, batches)
    assert statistics.num_batches == 2 and statistics.num_tokens == CALIBRATION.numel()
    found = set()
    for group_set in statistics.group_sets:
        assert set(statistics.squared_norms[group_set.key]) == {
            index for index, p in enumerate(group_set.projections) if p.spec.dim == "in"
        }
        for index, norms in statistics.squared_norms[group_set.key].items():
            name = group_set.projections[index].name
            found.add(name)
            assert norms.dtype == torch.float64 and norms.shape == expected[name].shape
            torch.testing.assert_close(norms, expected[name], rtol=1e-5, atol=1e-8)
    assert found == set(expected) and len(found) == 2 * LAYERS  # one o_proj-like and one down_proj-like per layer
    # every hook is gone
    assert all(not module._forward_pre_hooks for module in model.modules())


def _explicit_wanda_sp(model, group_set, squared_norms: torch.Tensor) -> torch.Tensor:
    """`S_g = sum over g's input columns j, over rows i, of |W_ij| * ||X_j||_2`, written out weight by weight.

    The input columns of o_proj / down_proj are contiguous per group: a KV-head group's query heads are consecutive
    (query head h reads KV head h // (heads / kv_heads)), an MLP channel is one column.
    """
    (projection,) = [p for p in group_set.projections if p.spec.dim == "in"]
    weight = projection.module.weight.detach().double()
    if isinstance(projection.module, Conv1D):
        weight = weight.T  # Conv1D stores [in, out]
    per_weight = weight.abs() * squared_norms.sqrt()[None, :]  # [out, in]
    width = weight.shape[1] // group_set.num_groups
    return torch.stack([per_weight[:, g * width : (g + 1) * width].sum() for g in range(group_set.num_groups)])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_wanda_sp_scores_are_weight_magnitude_times_input_norm(family):
    model = make_family_model(family)
    batches = list(torch.split(CALIBRATION, 4))
    statistics = _collect(model, batches)
    expected_norms = _captured_squared_norms(model, batches)
    scores = activation_scores(statistics)
    assert set(scores) == {gs.key for gs in statistics.group_sets}
    for group_set in statistics.group_sets:
        if group_set.layer != 0:
            continue
        (name,) = [p.name for p in group_set.projections if p.spec.dim == "in"]
        expected = _explicit_wanda_sp(model, group_set, expected_norms[name])
        got = scores[group_set.key]
        assert got.dtype == torch.float64 and got.shape == (group_set.num_groups,)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=0.0)
        assert got.unique().numel() == group_set.num_groups  # a real ranking, no ties


def test_wanda_sp_is_neither_the_weight_norm_nor_the_activation_norm_alone():
    """Guard for the test above: both factors matter, so neither alone reproduces the MLP ranking."""
    model = make_family_model("llama")
    statistics = _collect(model, list(torch.split(CALIBRATION, 4)))
    group_set = next(gs for gs in statistics.group_sets if gs.key == (0, "mlp"))
    (index,) = statistics.squared_norms[group_set.key]
    weight_only = group_set.projections[index].module.weight.detach().abs().sum(0).double()
    norm_only = statistics.squared_norms[group_set.key][index].sqrt()
    ranking = activation_scores(statistics)[group_set.key].argsort()
    assert not torch.equal(ranking, weight_only.argsort())
    assert not torch.equal(ranking, norm_only.argsort())


@pytest.mark.parametrize("family", ["llama", "gemma-mqa", "falcon-mqa", "gpt2"])
def test_micro_batches_and_autocast_keep_the_statistics(family):
    model = make_family_model(family)
    batches = list(torch.split(CALIBRATION, 4))
    whole = _collect(model, batches)
    chunked = _collect(model, batches, micro_batch_size=3)  # uneven chunks: 3 + 1 rows
    bfloat16 = _collect(model, batches, autocast_dtype="bfloat16")
    for key, per_projection in whole.squared_norms.items():
        for index, norms in per_projection.items():
            torch.testing.assert_close(chunked.squared_norms[key][index], norms, rtol=1e-5, atol=1e-8)
    whole_scores, bf16_scores = activation_scores(whole), activation_scores(bfloat16)
    for key, expected in whole_scores.items():
        got = bf16_scores[key]
        assert not torch.equal(got, expected)  # autocast really ran in bfloat16
        torch.testing.assert_close(got, expected, rtol=0.05, atol=0.0)


def test_hooks_are_removed_when_a_forward_pass_fails():
    model = make_tiny_model("llama-gqa")
    statistics = ActivationStatistics(build_group_sets(model, get_architecture("llama"), range(4), KINDS))
    with pytest.raises(IndexError):
        statistics.collect(model, [torch.full((2, 8), VOCAB + 5)], show_progress=False)  # past the embedding
    assert all(not module._forward_pre_hooks for module in model.modules())


def test_wanda_sp_needs_calibration_data():
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="wanda_sp"))
    with pytest.raises(ValueError, match=r"importance='wanda_sp' needs calibration_data"):
        pruner.prune(show_progress=False)
    group_sets = build_group_sets(make_tiny_model("llama-gqa"), get_architecture("llama"), range(4), KINDS)
    with pytest.raises(ValueError, match="wanda_sp needs calibration data"):
        activation_scores(ActivationStatistics(group_sets))


def test_the_pruner_keeps_the_groups_with_the_highest_wanda_sp_scores(token_batch):
    """The `uniform` layout keeps, in every slot, the top-k groups of the explicit `|W| * ||X||` scores computed on
    the calibration windows (the 8 rows of `token_batch`, cut as they are)."""
    model = make_tiny_model("llama-gqa")
    reference = copy.deepcopy(model)
    config = tiny_config(pruning_ratio=0.4, layout="uniform", importance="wanda_sp", calibration_sequence_length=32)
    pruner = HyWIAPruner(model, config)
    pruner.prune(token_batch, show_progress=False)
    assert "activations" in pruner.report.seconds and "gradients" not in pruner.report.seconds
    batches = list(torch.split(token_batch, config.calibration_batch_size))
    norms = _captured_squared_norms(reference, batches)
    pruned_slots = 0
    for group_set in build_group_sets(reference, get_architecture("llama"), range(4), KINDS):
        kept = pruner.report.kept_groups[f"{group_set.layer}.{group_set.kind}"]
        if len(kept) == group_set.num_groups:
            continue
        pruned_slots += 1
        (name,) = [p.name for p in group_set.projections if p.spec.dim == "in"]
        expected = _explicit_wanda_sp(reference, group_set, norms[name])
        assert sorted(kept) == sorted(expected.topk(len(kept)).indices.tolist()), group_set.key
    assert pruned_slots >= 4


@pytest.mark.parametrize("layout", ["uniform", "per_layer"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_wanda_sp_prunes_every_family_exactly(family, layout):
    base = make_family_model(family)
    model = copy.deepcopy(base)
    config = tiny_config(pruning_ratio=0.3, layout=layout, importance="wanda_sp", check_memory=family != "gemma3")
    pruner = HyWIAPruner(model, config)
    pruned = pruner.prune(CALIBRATION, show_progress=False)
    report = pruner.report
    assert report.importance == "wanda_sp" and report.fusion_alpha == {}
    assert report.params_after < report.params_before
    assert abs(report.achieved_ratio - 0.3) < 0.12, report.achieved_ratio
    with torch.no_grad():
        logits = pruned(INPUTS).logits
    torch.testing.assert_close(logits, masked_logits(base, pruner, INPUTS), rtol=1e-4, atol=1e-4)


def test_wanda_sp_prunes_a_bert_encoder_exactly():
    base = _tiny_bert()
    model = copy.deepcopy(base)
    pruner = HyWIAPruner(model, tiny_config(pruning_ratio=0.3, layout="per_layer", importance="wanda_sp"))
    pruned = pruner.prune(CALIBRATION, show_progress=False)
    assert pruner.report.params_after < pruner.report.params_before
    sets = build_group_sets(base, pruner.spec, range(LAYERS), KINDS)
    masks = {}
    for group_set in sets:
        masks[group_set.key] = torch.zeros(group_set.num_groups)
        masks[group_set.key][pruner.report.kept_groups[f"{group_set.layer}.{group_set.kind}"]] = 1.0
    with torch.no_grad():
        with group_masks(sets, masks):
            expected = base(INPUTS).last_hidden_state
        torch.testing.assert_close(pruned(INPUTS).last_hidden_state, expected, rtol=1e-4, atol=1e-4)
    # an encoder's statistics are those of a plain forward pass over every token
    statistics = _collect(copy.deepcopy(base), [CALIBRATION])
    reference = _captured_squared_norms(base, [CALIBRATION])
    for group_set in statistics.group_sets:
        for index, norms in statistics.squared_norms[group_set.key].items():
            torch.testing.assert_close(norms, reference[group_set.projections[index].name], rtol=1e-5, atol=1e-8)


def test_wanda_sp_prunes_baichuan_remote_code_exactly(tmp_path):
    save_baichuan_checkpoint(tmp_path / "baichuan", alibi=False)
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "baichuan", trust_remote_code=True).eval()
    model = copy.deepcopy(base)
    pruner = HyWIAPruner(model, tiny_config(pruning_ratio=0.3, layout="per_layer", importance="wanda_sp"))
    pruned = pruner.prune(CALIBRATION, show_progress=False)
    assert pruner.report.params_after < pruner.report.params_before
    with torch.no_grad():
        torch.testing.assert_close(pruned(INPUTS).logits, masked_logits(base, pruner, INPUTS), rtol=1e-4, atol=1e-4)


def test_the_command_line_offers_every_importance_method():
    assert "wanda_sp" in importance_names()
    parser = argparse.ArgumentParser()
    add_prune_arguments(parser)
    assert parser.parse_args(["model", "-o", "out", "--importance", "wanda_sp"]).importance == "wanda_sp"


def test_a_projection_that_is_never_called_as_a_module_is_refused():
    """Bloom's `slow_but_exact` tensor-parallel path multiplies by slices of `dense.weight` without calling `dense`:
    no input activation is seen, and wanda_sp says so instead of ranking by zeros."""
    config = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=8, pretraining_tp=2)
    config.slow_but_exact = True
    model = transformers.BloomForCausalLM(config).eval()
    with pytest.raises(RuntimeError, match="No activation reached transformer.h.0.self_attention.dense"):
        _collect(model, [CALIBRATION])
    assert all(not module._forward_pre_hooks for module in model.modules())
