"""End to end on tiny models: pruning is exact, meets the ratio, saves, reloads and generates."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from conftest import TINY_MODELS, VOCAB, make_tiny_model, masked_logits, run_python

from optimum_hywia import HyWIAConfig, HyWIAPruner, load_pruned_model
from optimum_hywia.importance import get_importance, importance_names

ARCHITECTURES = list(TINY_MODELS)
LAYOUTS = ["uniform", "per_layer"]


def tiny_config(**overrides) -> HyWIAConfig:
    settings = dict(num_calibration_samples=8, calibration_sequence_length=32, calibration_batch_size=4, fusion_steps=3)
    settings.setdefault("reconstruction", "none")  # exact masking equivalences; compensation has its own tests
    settings.update(overrides)
    return HyWIAConfig(**settings)


@pytest.mark.parametrize("importance", importance_names())
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_pruning_is_exact_and_meets_the_ratio(architecture, layout, importance, token_batch):
    model = make_tiny_model(architecture)
    reference = copy.deepcopy(model)
    ratio = 0.3
    # a method that chooses groups while updating weights (SlimGPT) needs its update: no masked equivalence then
    updates_weights = get_importance(importance).reselect is not None
    reconstruction = "least_squares" if updates_weights else "none"
    config = tiny_config(
        pruning_ratio=ratio,
        layout=layout,
        importance=importance,
        reconstruction=reconstruction,
        reconstruction_bias=False,
    )
    pruner = HyWIAPruner(model, config)
    pruned = pruner.prune(token_batch, show_progress=False)
    report = pruner.report

    inputs = torch.randint(3, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = pruned(inputs).logits
    if not updates_weights:
        torch.testing.assert_close(logits, masked_logits(reference, pruner, inputs), rtol=1e-5, atol=1e-5)

    pruned_layer_params = sum(report.layers[i]["params_before"] for i in report.pruned_layers)
    removed = report.decoder_params_before - report.decoder_params_after
    assert abs(removed - ratio * report.decoder_params_before) <= 0.02 * pruned_layer_params
    assert report.params_before - report.params_after == removed
    assert sum(p.numel() for p in pruned.parameters()) == report.params_after

    # KV-cache generation agrees with cache-free greedy decoding
    prompt = inputs[:1, :6]
    cached = pruned.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=True)
    uncached = pruned.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (1, 12)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_saved_checkpoint_reloads_in_a_fresh_process(architecture, layout, token_batch, tmp_path):
    model = make_tiny_model(architecture)
    pruner = HyWIAPruner(model, tiny_config(pruning_ratio=0.5, layout=layout))
    pruner.prune(token_batch, show_progress=False)
    folder = pruner.save_pretrained(tmp_path / "pruned")
    inputs = torch.arange(3, 23)[None]
    with torch.no_grad():
        expected = model(inputs).logits[0, -3:]

    files = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "hywia_config.json", "hywia_report.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    assert ("modeling_hywia.py" in files) == (not pruner.report.vanilla_config)
    if layout == "per_layer":
        assert not pruner.report.vanilla_config
    if architecture != "llama-mha" and layout == "uniform":
        assert pruner.report.vanilla_config  # head counts the vanilla config accepts were chosen

    remote = not pruner.report.vanilla_config
    output = run_python(
        f"""
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code={remote})
with torch.no_grad():
    logits = model(torch.arange(3, 23)[None]).logits[0, -3:]
generated = model.generate(torch.arange(3, 9)[None], max_new_tokens=4, min_new_tokens=4, do_sample=False)
print(json.dumps({{"logits": logits.tolist(), "generated": generated.shape[1], "class": type(model).__name__,
                  "imported": "optimum_hywia" in sys.modules}}))
"""
    )
    result = json.loads(output.strip().splitlines()[-1])
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=0, atol=1e-6)
    assert result["generated"] == 10
    assert result["imported"] is False
    assert result["class"].startswith("HyWIA") == remote

    # the package's own loader needs no remote code and gives the same model
    reloaded = load_pruned_model(folder)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(inputs).logits[0, -3:], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("architecture", ["llama-gqa", "qwen2"])
def test_gradual_pruning_removes_the_ratio_in_rescored_steps(architecture, layout, token_batch, tmp_path):
    model = make_tiny_model(architecture)
    reference = copy.deepcopy(model)
    ratio = 0.4
    pruner = HyWIAPruner(model, tiny_config(pruning_ratio=ratio, pruning_steps=2, layout=layout, importance="element2"))
    pruned = pruner.prune(token_batch, show_progress=False)
    report = pruner.report

    # without compensation the steps only remove groups: the report's kept groups, indices of the original
    # model's groups, reproduce the pruned model exactly
    inputs = torch.randint(3, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = pruned(inputs).logits
    torch.testing.assert_close(logits, masked_logits(reference, pruner, inputs), rtol=1e-5, atol=1e-5)

    first, second = report.steps
    assert first["pruning_ratio"] == pytest.approx(ratio / 2)
    # the second step's share is of what the first left, so that the two together remove `ratio` of the original
    left = first["decoder_params_after"] / report.decoder_params_before
    assert second["pruning_ratio"] == pytest.approx(1 - (1 - ratio) / left)
    assert second["decoder_params_after"] == report.decoder_params_after
    pruned_layer_params = sum(report.layers[i]["params_before"] for i in report.pruned_layers)
    removed = report.decoder_params_before - report.decoder_params_after
    assert abs(removed - ratio * report.decoder_params_before) <= 0.02 * pruned_layer_params
    assert report.pruning_ratio == ratio and pruner.config.pruning_steps == 2

    folder = pruner.save_pretrained(tmp_path / "pruned")
    assert json.loads((folder / "hywia_config.json").read_text())["pruning_steps"] == 2
    assert "removed gradually in 2 re-scored steps" in (folder / "README.md").read_text()
    with torch.no_grad():
        torch.testing.assert_close(load_pruned_model(folder)(inputs).logits, logits, rtol=0, atol=1e-6)


def test_gradual_pruning_compensates_every_step(token_batch):
    model = make_tiny_model("llama-gqa")
    config = tiny_config(pruning_ratio=0.4, pruning_steps=2, layout="per_layer", reconstruction="least_squares")
    pruner = HyWIAPruner(model, config)
    pruner.prune(token_batch, show_progress=False)
    assert len(pruner.report.steps) == 2
    assert pruner.report.reconstruction_errors  # the last step's refits
    assert pruner.report.seconds["compensation"] > 0
    assert abs(pruner.report.achieved_ratio - 0.4) < 0.05


def test_uniform_heads_the_vanilla_config_rejects_fall_back_to_the_override(token_batch, caplog):
    # 8 heads, hidden 64: 20% of the decoder taken from attention alone leaves 5 heads; LlamaConfig rejects 64 % 5
    model = make_tiny_model("llama-mha")
    pruner = HyWIAPruner(model, tiny_config(pruning_ratio=0.2, layout="uniform", group_kinds=("attention",)))
    pruner.prune(token_batch, show_progress=False)
    assert pruner.report.vanilla_config is False
    assert model.config.num_attention_heads == 8  # the config keeps vanilla-valid values
    assert model.config.hywia_layer_widths[0]["num_attention_heads"] == 5
    assert model.config.auto_map["AutoModelForCausalLM"] == "modeling_hywia.HyWIALlamaForCausalLM"


def test_report_records_the_learned_blend_and_per_layer_widths(token_batch):
    model = make_tiny_model("llama-gqa")
    pruner = HyWIAPruner(model, tiny_config(pruning_ratio=0.4, layout="per_layer"))
    pruner.prune(token_batch, show_progress=False)
    report = pruner.report
    assert len(report.fusion_losses) == 3
    assert set(report.fusion_alpha) == {f"{layer}.{kind}" for layer in range(4) for kind in ("attention", "mlp")}
    for alpha in report.fusion_alpha.values():  # element1, element2, vector
        assert len(alpha) == 3 and sum(alpha) == pytest.approx(1.0)
    assert [layer["after"]["intermediate_size"] for layer in report.layers] == [
        len(report.kept_groups[f"{layer}.mlp"]) for layer in range(4)
    ]
    assert set(report.seconds) >= {"gradients", "fusion", "surgery", "total"}


@pytest.mark.parametrize("layer_range", [None, (2, 15)])
def test_per_layer_prunes_every_layer_by_default_and_keeps_those_outside_a_given_range(token_batch, layer_range):
    model = make_tiny_model("llama-gqa", num_hidden_layers=16)
    config = tiny_config(pruning_ratio=0.2, layout="per_layer", importance="l2", layer_range=layer_range)
    pruner = HyWIAPruner(model, config)
    pruner.prune(show_progress=False)
    start, end = layer_range or (0, 16)
    assert pruner.report.pruned_layers == list(range(start, end))
    for layer in pruner.report.layers[:start] + pruner.report.layers[end:]:
        assert layer["after"] == layer["before"]


def test_prune_needs_calibration_data_for_gradient_methods():
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config())
    with pytest.raises(ValueError, match="needs calibration_data"):
        pruner.prune(show_progress=False)


def test_prune_twice_and_save_before_prune_are_refused(token_batch, tmp_path):
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="l2"))
    with pytest.raises(RuntimeError, match="Call prune"):
        pruner.save_pretrained(tmp_path / "x")
    pruner.prune(show_progress=False)
    with pytest.raises(RuntimeError, match="already pruned"):
        pruner.prune(show_progress=False)


def test_save_refuses_a_non_empty_folder_unless_overwrite(token_batch, tmp_path):
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="l2"))
    pruner.prune(show_progress=False)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        pruner.save_pretrained(target)
    assert (target / "keep.txt").read_text() == "user data"
    pruner.save_pretrained(target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folders left behind


def test_unsupported_architecture_fails_early_with_the_supported_list():
    from transformers import GPTJConfig, GPTJForCausalLM

    model = GPTJForCausalLM(GPTJConfig(n_layer=1, n_embd=16, n_head=2, vocab_size=32, rotary_dim=4))
    with pytest.raises(ValueError, match=r"model_type='gptj'.*Supported: \[.*'llama', 'mistral'.*'qwen2'"):
        HyWIAPruner(model)


def test_a_failed_save_leaves_the_previous_checkpoint_untouched(token_batch, tmp_path, monkeypatch):
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="l2"))
    pruner.prune(show_progress=False)
    target = pruner.save_pretrained(tmp_path / "out")
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def broken_write(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(HyWIAConfig, "save_pretrained", broken_write)
    with pytest.raises(OSError, match="disk full"):
        pruner.save_pretrained(target, overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_push_to_hub_uploads_the_saved_folder(token_batch, monkeypatch):
    import huggingface_hub

    calls = {}

    class RecordingApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls["files"] = sorted(p.name for p in folder_path.iterdir())
            calls["message"] = commit_message
            return f"https://hub.example/{repo_id}/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="l2", pruning_ratio=0.25))
    pruner.prune(show_progress=False)
    url = pruner.push_to_hub("me/tiny-hywia", private=True, token="secret")
    assert url.endswith("/commit/1")
    assert calls["repo"] == ("me/tiny-hywia", True, True) and calls["token"] == "secret"
    assert {"config.json", "model.safetensors", "hywia_config.json", "hywia_report.json"} <= set(calls["files"])
    assert calls["message"] == "Upload HyWIA-pruned model (25%)"


def test_saved_files_get_ordinary_permissions(tmp_path):
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="l2"))
    pruner.prune(show_progress=False)
    folder = pruner.save_pretrained(tmp_path / "out")
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    assert all(path.stat().st_mode & 0o777 == 0o666 & ~umask for path in folder.iterdir())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fixed_blend_extremes_rank_like_their_single_estimator(layout, token_batch):
    """With one fine estimator, the fused score of fusion_alpha=1 ranks exactly like it and 0 like vector (slot
    levels included); the ranking choice (`fusion_ranking="select"`) may re-rank inside slots but keeps the counts."""
    kept = {}
    fused = dict(importance="hywia", fine_estimators=("element1",), fusion_ranking="fused")
    for name, overrides in {
        "element1": dict(importance="element1"),
        "alpha1": dict(fused, fusion_alpha=1.0),
        "alpha1-select": dict(fused, fusion_alpha=1.0, fusion_ranking="select"),
        "vector": dict(importance="vector"),
        "alpha0": dict(fused, fusion_alpha=0.0),
    }.items():
        pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(pruning_ratio=0.3, layout=layout, **overrides))
        pruner.prune(calibration_data=token_batch, show_progress=False)
        kept[name] = pruner.report.kept_groups
        if name.startswith("alpha"):
            assert not pruner.report.fusion_losses  # no training for a fixed blend
            assert all(alpha[0] == overrides["fusion_alpha"] for alpha in pruner.report.fusion_alpha.values())
    assert kept["alpha1"] == kept["element1"]
    assert kept["alpha0"] == kept["vector"]
    assert {key: len(groups) for key, groups in kept["alpha1-select"].items()} == {
        key: len(groups) for key, groups in kept["element1"].items()
    }


def test_token_rows_are_pruned_with_as_given_unless_the_sizes_are_set(monkeypatch):
    """A 2-D token tensor is N samples of length L: all of them are used (not 32 random ones of 128 tokens)."""
    from optimum_hywia import scoring

    shapes = []
    real = scoring.prepare_calibration_data
    monkeypatch.setattr(
        scoring, "prepare_calibration_data", lambda *a, **k: shapes.append(real(*a, **k).shape) or real(*a, **k)
    )
    rows = torch.randint(3, 100, (40, 24), generator=torch.Generator().manual_seed(0))
    HyWIAPruner(make_tiny_model("llama-gqa"), HyWIAConfig(importance="element1")).prune(rows, show_progress=False)
    config = HyWIAConfig(importance="element1", num_calibration_samples=8, calibration_sequence_length=16)
    HyWIAPruner(make_tiny_model("llama-gqa"), config).prune(rows, show_progress=False)
    assert shapes == [(40, 24), (8, 16)]


def test_user_facing_output_names_the_plan_and_shows_the_memory_estimate_once(capsys, caplog):
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.INFO, logger="optimum_hywia"):
            pruner = HyWIAPruner(make_tiny_model("llama-gqa"), HyWIAConfig(importance="element1", fusion_steps=1))
            rows = torch.randint(3, 100, (8, 24), generator=torch.Generator().manual_seed(0))
            pruner.prune(rows, show_progress=True)
    finally:
        hf_logging.disable_propagation()
    printed = capsys.readouterr()
    everything = printed.out + printed.err + caplog.text
    assert everything.count("calibration memory estimate") == 1
    assert "PruningPlan(" not in everything and "uniform, remove " in caplog.text
