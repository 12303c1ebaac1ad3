"""The compensate stage: layer-by-layer refits of the input-sliced projections (`HyWIAConfig.reconstruction`)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import statistics

import pytest
import torch
from conftest import VOCAB, make_tiny_model
from test_families import (
    FAMILIES,
    _tiny_bert,
    make_family_model,
    reload_in_fresh_process,
    save_baichuan_checkpoint,
    tiny_config,
)

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.compensation import InputStatistics, refit
from optimum_hywia.groups import Key, decoder_layers
from optimum_hywia.importance.slimgpt import incremental_ratios

CALIBRATION = torch.randint(3, VOCAB, (16, 24), generator=torch.Generator().manual_seed(1))
INPUTS = torch.randint(3, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))


def captured_inputs(model, path: str, tokens: torch.Tensor) -> torch.Tensor:
    """Every calibration token's input row of one module, `[tokens, in_features]` (float64)."""
    rows = []
    handle = model.get_submodule(path).register_forward_pre_hook(
        lambda module, args: rows.append(args[0].detach().reshape(-1, args[0].shape[-1]))
    )
    with torch.no_grad():
        model(tokens, use_cache=False)
    handle.remove()
    return torch.cat(rows).double()


def kept_columns(report, layer: int, kind: str, per_group: int) -> torch.Tensor:
    groups = torch.tensor(report.kept_groups[f"{layer}.{kind}"])
    return (groups[:, None] * per_group + torch.arange(per_group)).flatten()


def test_refit_equals_a_direct_least_squares_solution():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(500, 12, generator=generator, dtype=torch.float64) + 0.3
    weight, bias = torch.randn(5, 12, generator=generator), torch.randn(5, generator=generator)
    kept = torch.tensor([0, 2, 3, 7, 8, 11])
    statistics = InputStatistics(torch.zeros(12, dtype=torch.float64), torch.zeros(12, 12, dtype=torch.float64))
    for chunk in inputs.float().split(100):
        statistics.add(chunk)
    target = inputs @ weight.double().T + bias.double()
    for fit_bias in (False, True):
        new_weight, new_bias = refit(weight, bias, kept, statistics, "least_squares", 0.0, fit_bias)
        design = inputs[:, kept]
        if fit_bias:
            design = torch.cat([design, torch.ones(len(inputs), 1, dtype=torch.float64)], 1)
            solution = torch.linalg.lstsq(design, target).solution
            torch.testing.assert_close(new_bias.double(), solution[-1], rtol=1e-4, atol=1e-4)
            solution = solution[:-1]
        else:
            solution = torch.linalg.lstsq(design, target - bias.double()).solution
            torch.testing.assert_close(new_bias, bias)  # a module's own bias stays when none is fitted
        torch.testing.assert_close(new_weight.double(), solution.T, rtol=1e-4, atol=1e-4)
    # FLAP's bias compensation: the removed columns' mean input moves into the bias
    _, flap_bias = refit(weight, bias, kept, statistics, "bias", 0.0, True)
    removed = torch.tensor([i for i in range(12) if i not in kept])
    expected = bias.double() + weight.double()[:, removed] @ inputs[:, removed].mean(0)
    torch.testing.assert_close(flap_bias.double(), expected, rtol=1e-5, atol=1e-5)


def test_refit_with_drift_equals_the_least_squares_solution_of_the_drifted_target():
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(400, 10, generator=generator, dtype=torch.float64) + 0.2
    drift = torch.randn(400, 4, generator=generator, dtype=torch.float64)
    weight, bias = torch.randn(4, 10, generator=generator), torch.randn(4, generator=generator)
    kept = torch.tensor([1, 2, 5, 6, 9])
    statistics = InputStatistics(torch.zeros(10, dtype=torch.float64), torch.zeros(10, 10, dtype=torch.float64))
    for rows, drift_rows in zip(inputs.float().split(100), drift.float().split(100)):
        statistics.add(rows)
        statistics.add_drift(rows, drift_rows)
    beta = 0.3
    target = inputs @ weight.double().T + bias.double() + beta * drift
    design = torch.cat([inputs[:, kept], torch.ones(len(inputs), 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(design, target).solution
    new_weight, new_bias = refit(weight, bias, kept, statistics, "least_squares", 0.0, True, drift=beta)
    torch.testing.assert_close(new_weight.double(), solution[:-1].T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(new_bias.double(), solution[-1], rtol=1e-4, atol=1e-4)
    # drift 0 ignores the drift statistics: the plain refit
    plain = refit(
        weight,
        bias,
        kept,
        InputStatistics(statistics.sums, statistics.gram, statistics.count),
        "least_squares",
        0.0,
        True,
    )
    torch.testing.assert_close(refit(weight, bias, kept, statistics, "least_squares", 0.0, True)[0], plain[0])


@pytest.mark.parametrize("family", [*FAMILIES, "opt-postnorm", "baichuan", "bert"])
def test_drift_correction_brings_the_pruned_model_closer_to_the_dense_one_where_the_family_allows(family, tmp_path):
    """With `reconstruction_drift`, each refit also pulls the residual stream back toward the dense model's: the
    pruned model's last hidden states on the calibration tokens end closer to the dense ones. Families without
    residual points (post-norm Gemma 2/3) are refit exactly as without it."""
    from transformers import AutoModelForCausalLM

    from optimum_hywia.architectures import get_architecture

    if family == "bert":
        dense = _tiny_bert()
    elif family == "opt-postnorm":  # OPT-350m's layout: LayerNorms after the residual sums
        config = make_family_model("opt").config
        config.do_layer_norm_before = False
        torch.manual_seed(0)
        dense = type(make_family_model("opt"))(config).eval()
    elif family == "baichuan":
        save_baichuan_checkpoint(tmp_path / "baichuan")
        dense = AutoModelForCausalLM.from_pretrained(tmp_path / "baichuan", trust_remote_code=True).eval()
    else:
        dense = make_family_model(family)
    spec = get_architecture(dense.config)

    def last_hidden(model):
        outputs = []
        handle = decoder_layers(model, spec)[1][-1].register_forward_hook(lambda m, a, out: outputs.append(out))
        with torch.no_grad():
            model(CALIBRATION)
        handle.remove()
        return outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]

    target = last_hidden(dense)
    results = {}
    for drift in (0.0, 0.5):
        model = copy.deepcopy(dense)
        config = tiny_config(
            importance="l2", layout="per_layer", pruning_ratio=0.4, reconstruction="least_squares",
            reconstruction_drift=drift, num_calibration_samples=16,
        )  # fmt: skip
        HyWIAPruner(model, config).prune(CALIBRATION, show_progress=False)
        results[drift] = model
    errors = {drift: float((last_hidden(model) - target).square().mean()) for drift, model in results.items()}
    if not spec.residual_points:
        for name, tensor in results[0.0].state_dict().items():
            assert torch.equal(results[0.5].state_dict()[name], tensor), name
    else:
        assert errors[0.5] < 0.95 * errors[0.0], errors


@pytest.mark.parametrize("reconstruction", ["least_squares", "bias"])
def test_a_prune_that_removes_nothing_leaves_every_weight_unchanged(reconstruction):
    from optimum_hywia.architectures import get_architecture
    from optimum_hywia.compensation import remove_and_compensate
    from optimum_hywia.groups import build_group_sets
    from optimum_hywia.surgery import layer_widths

    model = make_tiny_model("llama-gqa")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    spec = get_architecture(model.config)
    group_sets = build_group_sets(model, spec, range(4), ("attention", "mlp"))
    kept: dict[Key, torch.Tensor] = {gs.key: torch.arange(gs.num_groups) for gs in group_sets}
    config = HyWIAConfig(reconstruction=reconstruction, reconstruction_bias=False)
    errors = remove_and_compensate(
        model, spec, config, group_sets, kept, list(CALIBRATION.split(8)), layer_widths(model, spec), False
    )
    assert errors == {}
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


@pytest.mark.parametrize("kinds", [("attention",), ("mlp",)])
def test_first_layer_refit_is_the_least_squares_solution_and_lowers_the_output_error(kinds):
    """Layer 0's inputs do not depend on the pruning: its refit must be the direct least-squares solution."""
    kind = kinds[0]
    dense = make_tiny_model("llama-mha" if kind == "attention" else "llama-gqa")
    path = "model.layers.0." + ("self_attn.o_proj" if kind == "attention" else "mlp.down_proj")
    inputs = captured_inputs(dense, path, CALIBRATION)
    dense_weight = dense.get_submodule(path).weight.detach().double()
    target = inputs @ dense_weight.T
    config = dense.config
    heads_per_group = config.num_attention_heads // config.num_key_value_heads
    per_group = config.head_dim * heads_per_group if kind == "attention" else 1

    results = {}
    for reconstruction in ("none", "least_squares"):
        model = copy.deepcopy(dense)
        config = tiny_config(
            importance="l2",
            layout="uniform",
            group_kinds=kinds,
            pruning_ratio=0.2 if kind == "mlp" else 0.12,
            reconstruction=reconstruction,
            reconstruction_ridge=0.0,
            reconstruction_bias=False,
            num_calibration_samples=16,
        )
        pruner = HyWIAPruner(model, config)
        pruner.prune(CALIBRATION, show_progress=False)
        columns = kept_columns(pruner.report, 0, kind, per_group)
        weight = model.get_submodule(path).weight.detach().double()
        assert weight.shape[1] == len(columns) < dense_weight.shape[1]
        results[reconstruction] = (weight, columns)
        assert getattr(model.get_submodule(path), "bias", None) is None
    (plain, columns), (refit_weight, _) = results["none"], results["least_squares"]
    solution = torch.linalg.lstsq(inputs[:, columns], target).solution.T
    torch.testing.assert_close(refit_weight, solution, rtol=1e-3, atol=1e-4)

    def error(weight):
        return float((inputs[:, columns] @ weight.T - target).square().sum() / target.square().sum())

    assert error(refit_weight) < 0.9 * error(plain)
    report_error = pruner.report.reconstruction_errors[path]
    assert report_error == pytest.approx(error(refit_weight), rel=1e-3)


def test_a_uniform_llama_with_a_switched_on_bias_loads_with_vanilla_transformers(tmp_path):
    dense = make_tiny_model("llama-gqa")
    model = copy.deepcopy(dense)
    config = tiny_config(importance="l2", layout="uniform", pruning_ratio=0.25, reconstruction="bias")
    pruner = HyWIAPruner(model, config)
    pruner.prune(CALIBRATION, show_progress=False)
    assert pruner.report.vanilla_config
    assert model.config.mlp_bias and model.config.attention_bias
    down = model.model.layers[1].mlp.down_proj
    assert down.bias is not None and down.bias.abs().sum() > 0  # the compensation bias
    assert torch.count_nonzero(model.model.layers[1].mlp.up_proj.bias) == 0  # the switch's zero biases
    folder = pruner.save_pretrained(tmp_path / "pruned")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["mlp_bias"] and "auto_map" not in saved and not (folder / "modeling_hywia.py").exists()
    with torch.no_grad():
        expected = model(INPUTS).logits
    result = reload_in_fresh_process(
        RELOAD_VANILLA, [(str(folder), False, expected)]
    )  # no optimum_hywia import in the reloading process
    torch.testing.assert_close(torch.tensor(result["results"][str(folder)]["logits"]), expected[0, -3:])


RELOAD_VANILLA = """
import json, sys, torch
from transformers import AutoModelForCausalLM
results = {}
for folder, remote in json.loads(sys.argv[1]):
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        logits = model(torch.tensor(INPUTS)).logits[0, -3:]
    results[folder] = {"logits": logits.tolist()}
print(json.dumps({"results": results, "imported": "optimum_hywia" in sys.modules}))
""".replace("INPUTS", str(INPUTS.tolist()))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_prunes_compensates_saves_and_reloads(family, tmp_path):
    from transformers import AutoModelForCausalLM

    from optimum_hywia import load_pruned_model
    from optimum_hywia.architectures import get_architecture

    base = make_family_model(family)
    for layout, reconstruction in (("per_layer", "least_squares"), ("uniform", "least_squares")):
        model = copy.deepcopy(base)
        config = tiny_config(
            importance="l2", layout=layout, pruning_ratio=0.3, reconstruction=reconstruction, num_calibration_samples=16
        )
        pruner = HyWIAPruner(model, config)
        pruner.prune(CALIBRATION, show_progress=False)
        errors = pruner.report.reconstruction_errors
        assert errors and all(0 <= value < 1 for value in errors.values()), errors
        with torch.no_grad():
            expected = model(INPUTS).logits
        assert torch.isfinite(expected).all()
        folder = pruner.save_pretrained(tmp_path / layout)
        vanilla = pruner.report.vanilla_config
        # vanilla transformers where the family allows it (switched-on biases included), else the modeling override
        reloaded = (
            AutoModelForCausalLM.from_pretrained(folder)
            if vanilla
            else AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
            if family == "gemma3"  # see test_families: load_pruned_model and the renamed multimodal keys
            else load_pruned_model(folder)
        )
        with torch.no_grad():
            torch.testing.assert_close(reloaded.eval()(INPUTS).logits, expected, rtol=0, atol=1e-5)
        spec = get_architecture(base.config)
        if layout == "uniform" and spec.vanilla_loadable and spec.config_keys.head_dim is not None:
            assert vanilla, "uniform widths of this family must stay loadable with vanilla transformers"


def test_bias_reconstruction_is_refused_before_any_work_where_no_bias_can_be_carried():
    model = make_family_model("mistral")
    pruner = HyWIAPruner(model, tiny_config(importance="l2", reconstruction="bias"))
    with pytest.raises(ValueError, match="reconstruction='least_squares'"):
        pruner.prune(CALIBRATION, show_progress=False)
    assert pruner.report is None and not pruner._surgery_failed  # nothing was sliced: the model can be reused


def test_compensation_needs_calibration_data_even_for_weight_only_importance():
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="l2", reconstruction="least_squares"))
    with pytest.raises(ValueError, match="reconstruction='least_squares'"):
        pruner.prune(show_progress=False)


def test_damped_inverse_inverts_the_damped_gram_matrix_and_falls_back_to_the_pseudo_inverse():
    from optimum_hywia.obs import damped_inverse

    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(50, 12, generator=generator, dtype=torch.float64)
    gram = inputs.T @ inputs
    damped = gram + 0.01 * gram.diagonal().mean() * torch.eye(12, dtype=torch.float64)
    torch.testing.assert_close(damped_inverse(gram, 0.01), torch.linalg.inv(damped), rtol=1e-10, atol=1e-12)
    singular = gram.clone()
    singular[-1], singular[:, -1] = 0.0, 0.0  # an input that is always zero: no Cholesky factor without damping
    torch.testing.assert_close(damped_inverse(singular, 0.0), torch.linalg.pinv(singular, hermitian=True))


@pytest.mark.parametrize("width", [1, 2])  # MLP channels (block updates), heads of 2 columns
def test_slimgpt_greedy_obs_updates_equal_the_least_squares_refit_of_its_kept_columns(width):
    from optimum_hywia.obs import greedy_obs

    generator = torch.Generator().manual_seed(3)
    inputs = (
        torch.randn(400, 8, generator=generator, dtype=torch.float64) @ torch.randn(8, 8, generator=generator).double()
    )
    weight = torch.randn(5, 8, generator=generator)
    statistics = InputStatistics(torch.zeros(8, dtype=torch.float64), torch.zeros(8, 8, dtype=torch.float64))
    statistics.add(inputs)
    columns = [torch.arange(start, start + width) for start in range(0, 8, width)]
    kept, updated = greedy_obs(weight, statistics.gram, columns, keep=len(columns) // 2, ridge=0.01)
    kept_columns = torch.cat([columns[g] for g in kept.tolist()])
    refit_weight, _ = refit(weight, None, kept_columns, statistics, "least_squares", 0.01, False)
    torch.testing.assert_close(updated[:, kept_columns], refit_weight.double(), rtol=1e-4, atol=1e-5)

    def error(groups):  # output error of keeping `groups` after the least-squares refit
        cols = torch.cat([columns[g] for g in groups])
        new, _ = refit(weight, None, cols, statistics, "least_squares", 0.01, False)
        return float((inputs[:, cols] @ new.double().T - inputs @ weight.double().T).square().sum())

    subsets = itertools.combinations(range(len(columns)), len(columns) // 2)
    errors = sorted(error(subset) for subset in subsets)
    assert error(kept.tolist()) <= errors[len(errors) // 10]  # greedy: among the best tenth of every choice


def test_obs_keeps_the_best_groups_for_the_target_the_refit_aims_at():
    """With drift correction the refit aims at `X Wᵀ + β D`: OBS must choose against that target, not `X Wᵀ`."""
    from optimum_hywia.obs import obs_kept_groups

    generator = torch.Generator().manual_seed(5)
    inputs = (
        torch.randn(400, 8, generator=generator, dtype=torch.float64) @ torch.randn(8, 8, generator=generator).double()
    )
    weight = torch.randn(5, 8, generator=generator)
    drifts = inputs @ (2 * torch.randn(8, 5, generator=generator, dtype=torch.float64))  # drift the inputs can explain
    drifts += torch.randn(400, 5, generator=generator, dtype=torch.float64)
    statistics = InputStatistics(torch.zeros(8, dtype=torch.float64), torch.zeros(8, 8, dtype=torch.float64))
    statistics.add(inputs)
    statistics.add_drift(inputs, drifts)
    columns = [torch.arange(start, start + 1) for start in range(8)]
    drift = 0.5
    target = inputs @ weight.double().T + drift * drifts

    def error(groups):  # output error against the target after the refit of the kept columns
        cols = torch.cat([columns[g] for g in groups])
        new, _ = refit(weight, None, cols, statistics, "least_squares", 0.0, False, drift)
        return float((inputs[:, cols] @ new.double().T - target).square().sum())

    kept = obs_kept_groups(weight, statistics, columns, keep=4, ridge=0.0, drift=drift)
    best = min(error(subset) for subset in itertools.combinations(range(8), 4))
    assert len(kept) == 4 and error(kept.tolist()) == pytest.approx(best)
    blind = obs_kept_groups(weight, statistics, columns, keep=4, ridge=0.0)  # judged against X Wᵀ alone
    assert error(blind.tolist()) > 1.2 * best


def mlp_reselect_config(importance: str, ratio: float, **overrides) -> HyWIAConfig:
    """MLP channels only, pruned `per_layer` and refit by least squares (no bias), groups re-chosen by OBS."""
    settings = dict(
        importance=importance,
        layout="per_layer",
        group_kinds=("mlp",),
        pruning_ratio=ratio,
        reconstruction="least_squares",
        reconstruction_bias=False,
        reconstruction_reselect=True,
        num_calibration_samples=16,
    )
    return tiny_config(**{**settings, **overrides})


def test_reselect_keeps_each_layers_count_and_lets_greedy_obs_choose_its_groups():
    """Layer 0's inputs do not depend on the pruning: its kept channels are greedy OBS's on those inputs."""
    from optimum_hywia.obs import greedy_obs

    dense = make_tiny_model("llama-gqa")
    path = "model.layers.0.mlp.down_proj"
    inputs = captured_inputs(dense, path, CALIBRATION)
    weight = dense.get_submodule(path).weight.detach()
    reports = {}
    for reselect in (False, True):
        # the plain squared error, as SlimGPT's OBS
        config = mlp_reselect_config("l2", 0.3, reconstruction_reselect=reselect, reconstruction_reselect_damping=None)
        pruner = HyWIAPruner(copy.deepcopy(dense), config)
        pruner.prune(CALIBRATION, show_progress=False)
        reports[reselect] = pruner.report
    counts = {reselect: [len(groups) for groups in report.kept_groups.values()] for reselect, report in reports.items()}
    assert counts[True] == counts[False]  # the importance's allocation is kept
    keep = len(reports[True].kept_groups["0.mlp"])
    columns = [torch.tensor([channel]) for channel in range(weight.shape[1])]
    expected, _ = greedy_obs(weight, inputs.T @ inputs, columns, keep, ridge=0.01)
    assert reports[True].kept_groups["0.mlp"] == expected.tolist() != reports[False].kept_groups["0.mlp"]
    errors = {reselect: report.reconstruction_errors[path] for reselect, report in reports.items()}
    assert errors[True] < errors[False]


def output_fisher(model, path: str, batches: list[torch.Tensor]) -> torch.Tensor:
    """`Σ_t g_t g_tᵀ` of the calibration loss's gradient at one module's output, every token of `batches`."""
    from optimum_hywia.importance.statistics import calibration_loss

    outputs = []
    handle = model.get_submodule(path).register_forward_hook(
        lambda m, args, out: out.retain_grad() or outputs.append(out)
    )
    fisher = 0
    for batch in batches:
        outputs.clear()
        calibration_loss(model, batch).backward()
        rows = outputs[0].grad.reshape(-1, outputs[0].shape[-1]).double()
        fisher = fisher + rows.T @ rows
    handle.remove()
    model.zero_grad(set_to_none=True)
    return fisher


@pytest.mark.parametrize("damping", [0.01, 1.0])
def test_reselect_judges_removals_in_the_metric_of_the_output_fisher(damping):
    """Layer 0: the kept channels are greedy OBS's on `Lᵀ W` (`F + δ mean(diag F) I = L Lᵀ`, `F` the loss gradients'
    second moments at `down_proj`'s output), and they differ from the plain squared error's choice."""
    from optimum_hywia.obs import greedy_obs, output_metric
    from optimum_hywia.scoring import calibration_batches

    dense = make_tiny_model("llama-gqa")
    path = "model.layers.0.mlp.down_proj"
    kept = {}
    for metric in (damping, None):
        config = mlp_reselect_config("element1", 0.5, reconstruction_reselect_damping=metric)
        pruner = HyWIAPruner(copy.deepcopy(dense), config)
        pruner.prune(CALIBRATION, show_progress=False)
        kept[metric] = pruner.report.kept_groups["0.mlp"]
    batches = calibration_batches(dense, pruner.config, None, CALIBRATION)
    fisher = output_fisher(copy.deepcopy(dense), path, batches)
    inputs = captured_inputs(dense, path, CALIBRATION)
    weight = dense.get_submodule(path).weight.detach().double()
    left = torch.linalg.cholesky(output_metric(fisher, damping)).T
    columns = [torch.tensor([channel]) for channel in range(weight.shape[1])]
    expected, _ = greedy_obs(left @ weight, inputs.T @ inputs, columns, len(kept[damping]), ridge=0.01)
    assert kept[damping] == expected.tolist() != kept[None]


def test_a_singular_metric_is_factored_exactly():
    """An undamped Fisher of fewer tokens than output dimensions is singular: its root still gives `Rᵀ R = M`."""
    from optimum_hywia.obs import metric_root, output_metric

    gradients = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for damping in (0.0, 0.01):
        metric = output_metric(gradients.T @ gradients, damping)
        root = metric_root(metric)
        torch.testing.assert_close(root.T @ root, metric)


def test_output_fisher_is_the_same_with_gradient_checkpointing():
    from optimum_hywia.architectures import get_architecture
    from optimum_hywia.groups import build_group_sets
    from optimum_hywia.importance.statistics import GradientStatistics
    from optimum_hywia.memory import CalibrationModel

    model = make_tiny_model("llama-gqa")
    spec = get_architecture(model.config)
    group_sets = build_group_sets(model, spec, range(4), ("attention", "mlp"))
    fishers = []
    for checkpointing in (False, True):
        statistics = GradientStatistics(group_sets, output_fisher=True)
        runner = CalibrationModel(model, spec, None, None, checkpointing)
        statistics.collect(runner, CALIBRATION.split(8), show_progress=False)
        fishers.append(statistics.output_fisher)
    assert set(fishers[0]) == {gs.key for gs in group_sets}
    for key, fisher in fishers[0].items():
        assert fisher.shape == (model.config.hidden_size,) * 2 and fisher.abs().sum() > 0
        torch.testing.assert_close(fishers[1][key], fisher, rtol=1e-4, atol=1e-10)
    expected = output_fisher(model, "model.layers.2.self_attn.o_proj", CALIBRATION.split(8))
    torch.testing.assert_close(fishers[0][(2, "attention")].double(), expected, rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize(
    ("importance", "reconstruction", "reselects"),
    [
        ("hywia", None, True),  # least squares, since there is calibration data
        ("element1", "least_squares", True),
        ("element1", "none", False),
        ("wanda_sp", "least_squares", False),  # no gradient pass to collect the output Fisher
        ("slimgpt", "least_squares", False),  # re-chooses by its own plain OBS
    ],
)
def test_reselect_is_on_by_default_where_the_gradient_pass_collects_the_output_fisher(
    importance, reconstruction, reselects
):
    dense = make_tiny_model("llama-gqa")
    config = mlp_reselect_config(importance, 0.5, reconstruction=reconstruction, reconstruction_reselect=None)
    pruner = HyWIAPruner(copy.deepcopy(dense), config)
    pruner.prune(CALIBRATION, show_progress=False)
    assert pruner.config.reconstruction_reselect is reselects  # resolved, and so saved in hywia_config.json
    explicit = HyWIAPruner(copy.deepcopy(dense), dataclasses.replace(config, reconstruction_reselect=reselects))
    explicit.prune(CALIBRATION, show_progress=False)
    assert pruner.report.kept_groups == explicit.report.kept_groups


def test_reselect_in_the_fisher_metric_refuses_to_run_without_the_fisher():
    from optimum_hywia.architectures import get_architecture
    from optimum_hywia.compensation import remove_and_compensate
    from optimum_hywia.groups import build_group_sets
    from optimum_hywia.surgery import layer_widths

    model = make_tiny_model("llama-gqa")
    spec = get_architecture(model.config)
    group_sets = build_group_sets(model, spec, range(4), ("mlp",))
    kept = {gs.key: torch.arange(gs.num_groups // 2) for gs in group_sets}
    config = mlp_reselect_config("element1", 0.5)
    with pytest.raises(ValueError, match="needs the output Fisher of"):
        remove_and_compensate(
            model, spec, config, group_sets, kept, list(CALIBRATION.split(8)), layer_widths(model, spec), False
        )


def test_flap_scores_are_the_standardised_fluctuation_of_the_input_columns():
    from optimum_hywia.architectures import get_architecture
    from optimum_hywia.groups import build_group_sets
    from optimum_hywia.importance.activations import ActivationStatistics, fluctuation_scores

    model = make_tiny_model("llama-gqa")
    spec = get_architecture(model.config)
    group_sets = build_group_sets(model, spec, range(4), ("attention", "mlp"))
    statistics = ActivationStatistics(group_sets)
    statistics.collect(model, CALIBRATION.split(8), show_progress=False)
    scores = fluctuation_scores(statistics)
    for layer in (0, 3):
        inputs = captured_inputs(model, f"model.layers.{layer}.mlp.down_proj", CALIBRATION)
        weight = model.get_submodule(f"model.layers.{layer}.mlp.down_proj").weight.double()
        raw = inputs.var(0, unbiased=False) * weight.square().sum(0)
        expected = (raw - raw.mean()) / raw.std()
        torch.testing.assert_close(scores[(layer, "mlp")], expected, rtol=1e-4, atol=1e-4)
        inputs = captured_inputs(model, f"model.layers.{layer}.self_attn.o_proj", CALIBRATION)
        weight = model.get_submodule(f"model.layers.{layer}.self_attn.o_proj").weight.double()
        raw = (inputs.var(0, unbiased=False) * weight.square().sum(0)).view(2, -1).sum(1)  # 2 KV-head groups
        expected = (raw - raw.mean()) / raw.std()
        torch.testing.assert_close(scores[(layer, "attention")], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("importance", ["flap", "slimgpt"])
def test_the_leaders_prune_through_the_pipeline(importance):
    reconstruction = "bias" if importance == "flap" else "least_squares"
    dense = make_tiny_model("llama-gqa")
    model = copy.deepcopy(dense)
    config = tiny_config(importance=importance, layout="per_layer", pruning_ratio=0.3, reconstruction=reconstruction)
    pruner = HyWIAPruner(model, config)
    pruner.prune(CALIBRATION, show_progress=False)
    assert abs(pruner.report.achieved_ratio - 0.3) < 0.05
    widths = [layer["after"]["intermediate_size"] for layer in pruner.report.layers]
    assert len(set(widths)) > 1  # layers keep different widths
    if importance == "slimgpt":  # its Incremental Pruning Ratio: deeper layers lose more
        assert widths == sorted(widths, reverse=True)
    with torch.no_grad():
        assert torch.isfinite(model(INPUTS).logits).all()


@pytest.mark.parametrize(("layers", "ratio"), [(32, 0.2), (30, 0.5), (4, 0.3)])
def test_slimgpt_incremental_ratios_rise_logarithmically_to_four_times_the_first_and_average_the_target(layers, ratio):
    ratios = incremental_ratios(layers, ratio)
    assert statistics.fmean(ratios) == pytest.approx(ratio)
    assert ratios[-1] == pytest.approx(4 * ratios[0]) and ratios == sorted(ratios)
    rise = [(r - ratios[0]) / (ratios[-1] - ratios[0]) for r in ratios]
    assert rise == pytest.approx([math.log(1 + i) / math.log(layers) for i in range(layers)])
    if layers == 32:  # SlimGPT's own setting for LLaMA-7B at 20%: 0.0625 rising to 0.25
        assert (ratios[0], ratios[-1]) == pytest.approx((0.0625, 0.25), abs=1e-3)


def test_slimgpt_refuses_to_run_without_its_weight_update():
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="slimgpt"))
    with pytest.raises(ValueError, match="reconstruction='least_squares'"):
        pruner.prune(CALIBRATION, show_progress=False)


@pytest.mark.parametrize("first_layer_pruned", [True, False])
@pytest.mark.parametrize("family", ["llama", "gemma3", "falcon-rw", "gpt2", "bloom"])
def test_candidates_compensated_together_end_exactly_as_each_compensated_alone(family, first_layer_pruned):
    """The compensated choice compensates its candidates in lockstep, sharing the recording of the layers' calls and
    the dense stream (drift correction): every model must end bit for bit as its own compensation leaves it, where
    only one candidate prunes the first layer and where none does (the dense stream then starts later, from the
    first candidate's states)."""
    from optimum_hywia.architectures import get_architecture
    from optimum_hywia.compensation import remove_and_compensate, remove_and_compensate_together
    from optimum_hywia.groups import build_group_sets
    from optimum_hywia.surgery import layer_widths

    dense = make_family_model(family)
    spec = get_architecture(dense.config)
    layers = range(len(decoder_layers(dense, spec)[1]))
    sets = build_group_sets(dense, spec, layers, ("attention", "mlp"))
    whole_first = not first_layer_pruned
    half = {gs.key: torch.arange(gs.num_groups if whole_first and gs.layer == 0 else gs.num_groups // 2) for gs in sets}
    skewed = {gs.key: torch.arange(gs.num_groups if gs.layer == 0 else max(1, gs.num_groups // 4)) for gs in sets}
    config = HyWIAConfig(
        reconstruction="least_squares",
        reconstruction_drift=0.25,
        reconstruction_reselect=True,
        reconstruction_reselect_damping=None,
    )
    batches, widths = list(CALIBRATION.split(8)), layer_widths(dense, spec)
    together, alone = [], []
    for selection in (half, skewed):
        model = copy.deepcopy(dense)
        kept = {key: value.clone() for key, value in selection.items()}
        together.append((model, build_group_sets(model, spec, layers, ("attention", "mlp")), kept))
        model = copy.deepcopy(dense)
        kept = {key: value.clone() for key, value in selection.items()}
        errors = remove_and_compensate(
            model,
            spec,
            config,
            build_group_sets(model, spec, layers, ("attention", "mlp")),
            kept,
            batches,
            widths,
            show_progress=False,
        )
        alone.append((model, kept, errors))
    errors_together = remove_and_compensate_together(together, spec, config, batches, widths, show_progress=False)
    for (model, _, kept), errors, (expected, expected_kept, expected_errors) in zip(together, errors_together, alone):
        assert errors == expected_errors
        assert all(torch.equal(kept[key], expected_kept[key]) for key in kept)
        state, expected_state = model.state_dict(), expected.state_dict()
        assert state.keys() == expected_state.keys()
        for name, tensor in expected_state.items():
            assert torch.equal(state[name], tensor), name
    with torch.no_grad():
        outputs = [model(INPUTS).logits for model, _, _ in together]
    assert not torch.equal(outputs[0], outputs[1])  # two different compensated models, not one shared
