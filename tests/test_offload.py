"""Models offloaded to CPU/disk by accelerate (meta parameters restored around each forward) prune as resident."""

from __future__ import annotations

import pytest
import torch
from accelerate import cpu_offload, disk_offload
from conftest import VOCAB, make_tiny_model
from transformers import AutoModelForCausalLM

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.architectures import get_architecture
from optimum_hywia.groups import build_group_sets
from optimum_hywia.importance.statistics import GradientStatistics
from optimum_hywia.memory import CalibrationModel, estimate_calibration_memory

pytestmark = pytest.mark.filterwarnings("ignore:Attempting to save a model with offloaded modules")
SPEC = get_architecture("llama")
# layers 1 and 3 on disk; the MHA model (untied) also has its embeddings and LM head on disk
DEVICE_MAPS = {
    "llama-gqa": {"model.embed_tokens": "cpu", "lm_head": "cpu"},
    "llama-mha": {"model.embed_tokens": "disk", "lm_head": "disk"},
}
INPUTS = torch.randint(3, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folders = {}
    for name in DEVICE_MAPS:
        folders[name] = tmp_path_factory.mktemp(name)
        make_tiny_model(name, tie_word_embeddings=name == "llama-gqa").save_pretrained(folders[name])
    return folders


def load(checkpoints, name: str, offload: bool, tmp_path):
    if not offload:
        return AutoModelForCausalLM.from_pretrained(checkpoints[name]).eval()
    device_map = {f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(4)}
    device_map.update({"model.norm": "cpu", "model.rotary_emb": "cpu", **DEVICE_MAPS[name]})
    model = AutoModelForCausalLM.from_pretrained(
        checkpoints[name], device_map=device_map, offload_folder=str(tmp_path / "offload")
    ).eval()
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    assert model.model.layers[1].mlp.up_proj._hf_hook.offload
    return model


def tiny_config(**overrides) -> HyWIAConfig:
    settings = dict(num_calibration_samples=8, calibration_sequence_length=32, calibration_batch_size=4, fusion_steps=3)
    settings.setdefault("reconstruction", "none")  # exact masking equivalences; compensation has its own tests
    settings.update(overrides)
    return HyWIAConfig(**settings)


def statistics(model, token_batch, **runner_options) -> GradientStatistics:
    group_sets = build_group_sets(model, SPEC, range(4), ("attention", "mlp"))
    result = GradientStatistics(group_sets)
    runner = model if runner_options.pop("bare", False) else CalibrationModel(model, SPEC, **runner_options)
    result.collect(runner, torch.split(token_batch, 4), show_progress=False)
    return result


@pytest.mark.parametrize(
    "options",
    [{"bare": True}, {}, {"micro_batch_size": 2}, {"micro_batch_size": 2, "gradient_checkpointing": True}],
    ids=["bare-model", "plain", "micro-batches", "checkpointing"],
)
@pytest.mark.parametrize("name", list(DEVICE_MAPS))
def test_gradient_statistics_match_the_resident_model(checkpoints, name, options, token_batch, tmp_path):
    resident = statistics(load(checkpoints, name, False, tmp_path), token_batch, **options)
    model = load(checkpoints, name, True, tmp_path)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    offloaded = statistics(model, token_batch, **options)
    assert offloaded.num_batches == resident.num_batches == 2
    for key, per_projection in resident.stats.items():
        for expected, actual in zip(per_projection, offloaded.stats[key]):
            assert expected.absolute.abs().sum() > 0
            for field in ("signed", "absolute", "squared"):
                torch.testing.assert_close(getattr(actual, field), getattr(expected, field), rtol=1e-6, atol=1e-12)
    # the model is left as loaded: offloaded weights back on meta, requires_grad restored, and it still runs
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires_grad
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(INPUTS).logits, load(checkpoints, name, False, tmp_path)(INPUTS).logits)


def prune_both(checkpoints, name, config, token_batch, tmp_path):
    results = []
    for offload in (False, True):
        model = load(checkpoints, name, offload, tmp_path)
        pruner = HyWIAPruner(model, config)
        pruner.prune(token_batch, show_progress=False)
        with torch.no_grad():
            logits = model(INPUTS).logits
        results.append((pruner, logits))
    return results


def reloaded_logits(folder, remote: bool) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote)
    assert all(p.device.type == "cpu" for p in model.parameters())
    with torch.no_grad():
        return model(INPUTS).logits


@pytest.mark.parametrize("layout", ["per_layer", "uniform"])
@pytest.mark.parametrize("importance", ["hywia", "element2"])
@pytest.mark.parametrize("name", list(DEVICE_MAPS))
def test_offloaded_model_prunes_and_saves_like_the_resident_one(
    checkpoints, name, importance, layout, token_batch, tmp_path
):
    config = tiny_config(pruning_ratio=0.3, importance=importance, layout=layout)
    (resident, expected), (offloaded, logits) = prune_both(checkpoints, name, config, token_batch, tmp_path)
    assert offloaded.report.kept_groups == resident.report.kept_groups
    assert offloaded.report.params_after == resident.report.params_after < resident.report.params_before
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    # pruned offloaded layers stay offloaded (their sliced weights now in CPU RAM)
    assert offloaded.model.model.layers[1].mlp.up_proj.weight.device.type == "meta"

    folder = offloaded.save_pretrained(tmp_path / "pruned")
    torch.testing.assert_close(reloaded_logits(folder, not offloaded.report.vanilla_config), expected)


@pytest.mark.parametrize("importance", ["element1", "vector", "l2", "random", "wanda_sp"])
def test_every_other_importance_keeps_the_same_groups(checkpoints, importance, token_batch, tmp_path):
    config = tiny_config(pruning_ratio=0.3, importance=importance, layout="per_layer")
    (resident, expected), (offloaded, logits) = prune_both(checkpoints, "llama-mha", config, token_batch, tmp_path)
    assert offloaded.report.kept_groups == resident.report.kept_groups
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_lean_calibration_options_keep_the_same_groups(checkpoints, token_batch, tmp_path):
    config = tiny_config(
        pruning_ratio=0.3,
        calibration_micro_batch_size=2,
        gradient_checkpointing=True,
        autocast_dtype="bfloat16",
        layer_range=(0, 3),
    )
    kept = []
    for offload in (False, True):
        pruner = HyWIAPruner(load(checkpoints, "llama-gqa", offload, tmp_path), config)
        pruner.prune(token_batch, show_progress=False)
        kept.append(pruner.report.kept_groups)
    assert kept[1] == kept[0]
    # checkpoint replays that stop early (in down_proj) leave no restored weight behind, also in unpruned layer 3
    assert all(p.device.type == "meta" for p in pruner.model.model.layers[3].parameters())


def test_accelerate_offload_helpers_without_a_device_map(checkpoints, token_batch, tmp_path):
    """`cpu_offload` (weights in CPU RAM) and `disk_offload` on single layers: no hf_device_map tells transformers."""
    config = tiny_config(pruning_ratio=0.3, layout="uniform")
    resident = load(checkpoints, "llama-gqa", False, tmp_path)
    model = load(checkpoints, "llama-gqa", False, tmp_path)
    cpu_offload(model.model.layers[1], execution_device=torch.device("cpu"))
    disk_offload(model.model.layers[2], str(tmp_path / "disk"), execution_device=torch.device("cpu"))
    assert model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    assert model.model.layers[2].self_attn.q_proj.weight.device.type == "meta"
    reference = HyWIAPruner(resident, config)
    reference.prune(token_batch, show_progress=False)
    pruner = HyWIAPruner(model, config)
    pruner.prune(token_batch, show_progress=False)
    assert pruner.report.kept_groups == reference.report.kept_groups
    with torch.no_grad():
        expected = resident(INPUTS).logits
        torch.testing.assert_close(model(INPUTS).logits, expected, rtol=1e-5, atol=1e-5)
    folder = pruner.save_pretrained(tmp_path / "pruned")
    torch.testing.assert_close(reloaded_logits(folder, False), expected, rtol=1e-5, atol=1e-5)


def test_memory_estimate_counts_offloaded_weights_as_not_resident(checkpoints, tmp_path):
    resident = estimate_calibration_memory(load(checkpoints, "llama-gqa", False, tmp_path), SPEC, 4, 32)
    offloaded = estimate_calibration_memory(load(checkpoints, "llama-gqa", True, tmp_path), SPEC, 4, 32)
    layer = sum(p.numel() * 4 for p in make_tiny_model("llama-gqa").model.layers[1].parameters())
    projections = sum(p.numel() * 4 for p in make_tiny_model("llama-gqa").model.layers[1].parameters() if p.ndim == 2)
    assert resident.offloaded == 0
    assert offloaded.weights == resident.weights - 2 * layer
    assert offloaded.offloaded == 2 * projections
    assert "offloaded" in offloaded.summary() and offloaded.device == "cpu"


def test_meta_weights_without_an_offload_hook_are_refused(token_batch):
    model = make_tiny_model("llama-gqa")
    layer = model.model.layers[2].mlp
    layer.up_proj.weight = torch.nn.Parameter(torch.empty_like(layer.up_proj.weight, device="meta"))
    with pytest.raises(ValueError, match=r"model\.layers\.2\.mlp\.up_proj\.weight is on the meta device and no "):
        HyWIAPruner(model, tiny_config()).prune(token_batch, show_progress=False)
    with pytest.raises(ValueError, match="offload IS supported: load the model with a device_map"):
        HyWIAPruner(model, tiny_config()).prune(token_batch, show_progress=False)


def test_projections_offloaded_by_a_parent_hook_are_refused_before_any_work(checkpoints, token_batch, tmp_path):
    model = load(checkpoints, "llama-gqa", False, tmp_path)
    cpu_offload(model.model.layers[1], execution_device=torch.device("cpu"), preload_module_classes=["LlamaMLP"])
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    with pytest.raises(ValueError, match="offloaded by a parent module's hook"):
        HyWIAPruner(model, tiny_config()).prune(token_batch, show_progress=False)
    assert model.model.layers[1].mlp.up_proj.weight.shape == (96, 64)  # untouched


@pytest.mark.parametrize("reconstruction", ["least_squares", "bias"])
@pytest.mark.parametrize("name", list(DEVICE_MAPS))
def test_compensated_offloaded_model_matches_the_resident_one(checkpoints, name, reconstruction, token_batch, tmp_path):
    from optimum_hywia.offload import materialised_state_dict

    config = tiny_config(pruning_ratio=0.3, importance="element1", layout="per_layer", reconstruction=reconstruction)
    (resident, expected), (offloaded, logits) = prune_both(checkpoints, name, config, token_batch, tmp_path)
    assert offloaded.report.kept_groups == resident.report.kept_groups
    assert offloaded.model.model.layers[1].mlp.down_proj.bias is not None  # Llama's mlp_bias, switched on
    resident_weights, offloaded_weights = resident.model.state_dict(), materialised_state_dict(offloaded.model)
    assert offloaded_weights.keys() == resident_weights.keys()
    for key, value in resident_weights.items():
        torch.testing.assert_close(offloaded_weights[key], value, rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    folder = offloaded.save_pretrained(tmp_path / "pruned")
    torch.testing.assert_close(reloaded_logits(folder, not offloaded.report.vanilla_config), expected)
