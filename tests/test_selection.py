"""The compensated choice between whole selections (`HyWIAConfig.selection_candidates`, `selection.py`)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import arithmetic_sequences, make_trained_tiny_model
from transformers import AutoModelForCausalLM

from optimum_hywia import HyWIAConfig, HyWIAPruner, load_pruned_model
from optimum_hywia.architectures import get_architecture
from optimum_hywia.compensation import remove_and_compensate
from optimum_hywia.data import held_out_windows, prepare_calibration_data
from optimum_hywia.groups import build_group_sets
from optimum_hywia.importance.ranking import RACE_MIN_BATCHES
from optimum_hywia.importance.statistics import TeacherCache
from optimum_hywia.selection import calibration_kl, compensate_best_selection, race
from optimum_hywia.surgery import layer_widths, rewrite_config

# one token stream: 32 calibration windows of 32 tokens, and held-out windows of 4 x 32 tokens that judge the choice
CALIBRATION = arithmetic_sequences(256, seed=1000).flatten()
INPUTS = arithmetic_sequences(2, seed=2000)
CALIBRATION_WINDOWS = prepare_calibration_data(CALIBRATION, num_samples=32, sequence_length=32, seed=0)


@pytest.fixture(scope="module")
def trained():
    return make_trained_tiny_model()


def settings(**overrides) -> HyWIAConfig:
    values = dict(
        pruning_ratio=0.4,
        layout="per_layer",
        layer_range=(0, 2),
        num_calibration_samples=32,
        calibration_sequence_length=32,
        calibration_batch_size=8,
        fusion_steps=4,
        reconstruction="least_squares",
    )
    return HyWIAConfig(**{**values, **overrides})


def held_out_kl(dense, pruned) -> float:
    windows = held_out_windows(CALIBRATION, num_samples=32, sequence_length=32, seed=0, length_multiple=4)
    assert windows.shape == (8, 128)  # disjoint from the calibration windows: tests/test_data.py
    return calibration_kl(pruned, dense, TeacherCache(1 << 30), list(windows.split(2)))


def test_hywia_keeps_the_candidate_whose_compensated_model_is_closest_to_the_dense_one(trained, tmp_path):
    pruner = HyWIAPruner(copy.deepcopy(trained), settings(selection_candidates=("element1", "element2")))
    pruned = pruner.prune(CALIBRATION, show_progress=False)
    report = pruner.report
    losses = report.selection_losses
    assert report.selection == min(losses, key=losses.get) and "hywia" in losses
    # the reported loss is the pruned model's own KL on calibration windows that no earlier stage saw
    assert held_out_kl(trained, pruned) == pytest.approx(losses[report.selection], rel=1e-5)
    # each single-estimate candidate is exactly that estimator's own prune (same statistics, plan and compensation)
    for name in set(losses) - {"hywia"}:
        single = HyWIAPruner(copy.deepcopy(trained), settings(importance=name))
        model = single.prune(CALIBRATION, show_progress=False)
        assert held_out_kl(trained, model) == pytest.approx(losses[name], rel=1e-5)
        if name == report.selection:
            assert single.report.kept_groups == report.kept_groups
            with torch.no_grad():
                torch.testing.assert_close(model(INPUTS).logits, pruned(INPUTS).logits, rtol=0, atol=1e-6)
    card = (pruner.save_pretrained(tmp_path / "pruned") / "README.md").read_text()
    named = f"The groups removed are those `{report.selection}` selects"
    assert (named in card) == (report.selection != "hywia")


def test_a_candidate_compensated_on_a_copy_replaces_the_models_layers_and_reloads(trained, tmp_path):
    """Every candidate but the last is compensated on a copy: when one of those wins, its layers move into the model
    and the result is the one a direct compensation of that selection gives, saved and reloaded exactly."""
    model = copy.deepcopy(trained)
    spec = get_architecture(model.config)
    config = settings()
    sets = build_group_sets(model, spec, range(2), ("attention", "mlp"))
    good = {gs.key: torch.arange(gs.num_groups // 2) for gs in sets}
    worse = {gs.key: torch.arange(gs.num_groups // 2) for gs in sets}
    worse[sets[-1].key] = torch.arange(1)  # one MLP keeps one channel: far from the dense model
    widths = layer_widths(model, spec)
    batches = list(CALIBRATION_WINDOWS.split(8))
    candidates = {"good": good, "worse": worse}
    choice = compensate_best_selection(model, spec, config, sets, candidates, batches, widths, False, batches)
    assert choice.chosen == "good" and choice.losses["good"] < choice.losses["worse"]
    expected = copy.deepcopy(trained)
    direct = {key: value.clone() for key, value in good.items()}
    expected_sets = build_group_sets(expected, spec, range(2), ("attention", "mlp"))
    remove_and_compensate(expected, spec, config, expected_sets, direct, batches, widths, show_progress=False)
    with torch.no_grad():
        torch.testing.assert_close(model(INPUTS).logits, expected(INPUTS).logits, rtol=0, atol=0)
    assert all(m.config is model.config for m in model.modules() if hasattr(m, "config"))
    vanilla = rewrite_config(model, spec, widths)
    model.save_pretrained(tmp_path)
    reloaded = (AutoModelForCausalLM.from_pretrained(tmp_path) if vanilla else load_pruned_model(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(INPUTS).logits, expected(INPUTS).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("reselect", [False, True])
def test_with_obs_reselection_candidates_of_equal_counts_are_compensated_once(trained, reselect):
    """Where compensation re-chooses the groups (greedy OBS), a selection only sets how many groups each set keeps:
    candidates with the same counts give the same model, so only the first is compensated."""
    model = copy.deepcopy(trained)
    spec = get_architecture(model.config)
    config = settings(reconstruction_reselect=reselect, reconstruction_reselect_damping=None)
    sets = build_group_sets(model, spec, range(2), ("attention", "mlp"))
    first = {gs.key: torch.arange(gs.num_groups // 2) for gs in sets}
    last = {gs.key: torch.arange(gs.num_groups - gs.num_groups // 2, gs.num_groups) for gs in sets}
    widths = layer_widths(model, spec)
    batches = list(CALIBRATION_WINDOWS.split(8))
    choice = compensate_best_selection(
        model, spec, config, sets, {"first": first, "last": last}, batches, widths, False, batches
    )
    assert set(choice.losses) == (set() if reselect else {"first", "last"})
    expected = copy.deepcopy(trained)
    direct = {key: value.clone() for key, value in last.items()}
    expected_sets = build_group_sets(expected, spec, range(2), ("attention", "mlp"))
    remove_and_compensate(expected, spec, config, expected_sets, direct, batches, widths, show_progress=False)
    with torch.no_grad():
        same = torch.equal(model(INPUTS).logits, expected(INPUTS).logits)
    assert same == (reselect or choice.chosen == "last")


def test_without_spare_windows_the_choice_is_judged_on_the_calibration_windows(trained, caplog):
    pruner = HyWIAPruner(copy.deepcopy(trained), settings(selection_candidates=("element2",)))
    with caplog.at_level("WARNING"):
        pruned = pruner.prune(CALIBRATION_WINDOWS, show_progress=False)  # 32 rows for 32 samples: none to spare
    assert "no windows to spare" in caplog.text
    losses = pruner.report.selection_losses
    kl = calibration_kl(pruned, trained, TeacherCache(1 << 30), list(CALIBRATION_WINDOWS.split(8)))
    assert kl == pytest.approx(losses[pruner.report.selection], rel=1e-5)


def test_no_candidates_keeps_hywias_selection_without_a_choice(trained):
    pruner = HyWIAPruner(copy.deepcopy(trained), settings(selection_candidates=()))
    pruner.prune(CALIBRATION, show_progress=False)
    assert pruner.report.selection == "" and pruner.report.selection_losses == {}


@pytest.mark.parametrize(
    ("overrides", "ranking", "chooses"),
    [
        ({}, "fused", True),  # the compensated choice supersedes the ranking choice
        ({"fusion_ranking": "select"}, "select", True),  # as given
        ({"selection_candidates": ()}, "select", False),
        ({"reconstruction": "none"}, "select", False),
    ],
)
def test_the_ranking_choice_runs_by_default_only_without_the_compensated_choice(trained, overrides, ranking, chooses):
    pruner = HyWIAPruner(copy.deepcopy(trained), settings(**{"reconstruction": None, **overrides}))
    assert pruner.config.fusion_ranking == overrides.get("fusion_ranking")
    pruner.prune(CALIBRATION, show_progress=False)
    report = pruner.report
    assert pruner.config.fusion_ranking == ranking  # resolved, and so saved in hywia_config.json
    assert ("ranking" in report.seconds) == (ranking == "select") == bool(report.fusion_ranking)
    assert bool(report.selection_losses) == chooses


def _perturbed(model, scale: float, seed: int):
    copied = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in copied.model.layers.parameters():
            parameter.add_(scale * parameter.abs().mean() * torch.randn(parameter.shape, generator=generator))
    return copied


def test_the_race_drops_a_clearly_worse_candidate_early_and_estimates_its_loss(trained):
    close, far = _perturbed(trained, 0.05, 0), _perturbed(trained, 1.0, 1)
    chunks = list(arithmetic_sequences(16, seed=3000).split(1))
    forwards = []
    far.register_forward_hook(lambda *args: forwards.append(1))
    winner, losses = race({"far": far, "close": close}, trained, TeacherCache(1 << 30), chunks)
    assert winner == "close" and RACE_MIN_BATCHES <= len(forwards) < len(chunks)  # dropped: the race ended there
    seen = chunks[: len(forwards)]
    close_kl = calibration_kl(close, trained, TeacherCache(1 << 30), seen)
    assert losses["close"] == pytest.approx(close_kl, rel=1e-6)  # the winner's loss: the chunks it raced on
    far_kl = calibration_kl(far, trained, TeacherCache(1 << 30), seen)  # equal chunks: the paired estimate is exact
    assert losses["far"] == pytest.approx(far_kl, rel=1e-6) and far_kl > 2 * close_kl


def test_a_tie_runs_the_whole_race_and_keeps_the_first_candidate(trained):
    chunks = list(arithmetic_sequences(8, seed=3000).split(1))
    winner, losses = race({"a": trained, "b": copy.deepcopy(trained)}, trained, TeacherCache(1 << 30), chunks)
    assert winner == "a" and losses["a"] == losses["b"] == pytest.approx(0.0, abs=1e-6)


def test_selection_candidates_must_be_single_gradient_estimates():
    with pytest.raises(ValueError, match="selection_candidates"):
        HyWIAConfig(selection_candidates=("hywia",))
    assert HyWIAConfig(selection_candidates="element1").selection_candidates == ("element1",)


def test_the_model_card_names_the_estimate_whose_selection_was_kept():
    from optimum_hywia.model_card import ModelSource, _title_section

    report = {"achieved_ratio": 0.2, "importance": "hywia", "layout": "per_layer", "selection": "element2"}
    title = _title_section("pruned", report, ModelSource(), per_layer=True)
    assert "The groups removed are those `element2` selects" in title
    for selection in ("hywia", ""):
        assert "The groups removed" not in _title_section(
            "pruned", {**report, "selection": selection}, ModelSource(), True
        )
