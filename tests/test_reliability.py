"""Reliability and security: bad input gets a clear error and leaves the model untouched, saves are atomic even when
the process is killed, runs are deterministic, and nothing is unpickled or read outside the checkpoint folder.

Bad inputs already covered elsewhere are listed in docs/reliability.md with their test ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, make_tiny_model, run_python
from safetensors.torch import load_file

import optimum_hywia
from optimum_hywia import HyWIAConfig, HyWIAPruner, load_pruned_model
from optimum_hywia.configuration import CONFIG_NAME
from optimum_hywia.modeling import MODELING_FILE

PACKAGE_DIR = Path(optimum_hywia.__file__).parent
TESTS_DIR = Path(__file__).parent


def tiny_config(**overrides) -> HyWIAConfig:
    settings = dict(num_calibration_samples=8, calibration_sequence_length=32, calibration_batch_size=4, fusion_steps=3)
    settings.setdefault("reconstruction", "none")  # exact masking equivalences; compensation has its own tests
    settings.update(overrides)
    return HyWIAConfig(**settings)


def model_state(model: torch.nn.Module) -> dict:
    """Everything a failed prune must leave as it was: weights, grad flags, hooks, mode, config widths."""
    return {
        "weights": {name: tensor.clone() for name, tensor in model.state_dict().items()},
        "requires_grad": {name: param.requires_grad for name, param in model.named_parameters()},
        "grads": [name for name, param in model.named_parameters() if param.grad is not None],
        "hooks": sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()),
        "training": model.training,
        "config": model.config.to_dict(),
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["weights"].keys() == after["weights"].keys()
    for name, tensor in before["weights"].items():
        assert torch.equal(tensor, after["weights"][name]), name
    assert {k: v for k, v in before.items() if k != "weights"} == {k: v for k, v in after.items() if k != "weights"}


# --- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param({"group_kinds": 5}, r"group_kinds must be a list", id="group_kinds-int"),
        pytest.param({"group_kinds": None}, r"group_kinds must be a list", id="group_kinds-null"),
        pytest.param({"fusion_temperature": 1.0}, r"fusion_temperature must be a list", id="temperature-float"),
        pytest.param(
            {"fusion_temperature": [1.0, "cold"]},
            r"fusion_temperature must be two positive numbers",
            id="temperature-str",
        ),
        pytest.param(
            {"fusion_temperature": [1.0, float("inf")]},
            r"fusion_temperature must be two positive numbers",
            id="temperature-inf",
        ),
        pytest.param(
            {"fusion_learning_rate": float("nan")}, r"fusion_learning_rate must be > 0 and finite", id="lr-nan"
        ),
        pytest.param({"layer_range": "0-3"}, r"layer_range must be a list", id="layer_range-str"),
        pytest.param({"layer_range": [0.5, 2]}, r"layer_range must be two integers", id="layer_range-float"),
        pytest.param({"pruning_ratio": None}, r"pruning_ratio must be a number", id="ratio-null"),
        pytest.param({"pruning_ratio": float("nan")}, r"pruning_ratio must be in \(0, 1\)", id="ratio-nan"),
        pytest.param({"seed": "0"}, r"seed must be an integer", id="seed-str"),
        pytest.param({"round_to": 8.0}, r"round_to must be an integer", id="round_to-float"),
        pytest.param({"optimum_hywia_version": 3}, r"optimum_hywia_version must be a string", id="version-int"),
        pytest.param({"importance": ["hywia"]}, r"importance must be one of", id="importance-list"),
        pytest.param([0.2], r"must hold a JSON object, got list", id="top-level-list"),
    ],
)
def test_wrong_types_in_hywia_config_json_get_a_clear_error(tmp_path, content, message):
    (tmp_path / CONFIG_NAME).write_text(json.dumps(content))  # json.dumps writes NaN/Infinity, which json.loads reads
    with pytest.raises(ValueError, match=message):
        HyWIAConfig.from_pretrained(tmp_path)


def test_a_missing_config_folder_is_reported_without_asking_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked for a local path")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    for missing in (tmp_path / "typo", str(tmp_path / "typo"), "./typo", "runs/2024/typo", "typo/hywia_config.json"):
        with pytest.raises(FileNotFoundError, match=r"does not exist: pass a folder holding hywia_config.json"):
            HyWIAConfig.from_pretrained(missing)


@pytest.mark.parametrize(
    "layout, ratio, nearest",
    [
        ("uniform", 0.05, "0.1786"),  # 2 KV-head groups: a layer keeps 1 (17.86% removed) or 2 (nothing removed)
        ("uniform", 0.1, "0.1786"),
        ("per_layer", 0.01, "0.04464"),  # one KV-head group of one layer is 4.46% of the decoder
    ],
)
def test_gqa_ratio_that_cannot_be_met_names_the_nearest_feasible_one(layout, ratio, nearest):
    model = make_tiny_model("llama-gqa")  # 2 KV-head groups per layer, each 5,120 of the 28,672 parameters a layer has
    before = model_state(model)
    config = tiny_config(
        pruning_ratio=ratio, importance="l2", layout=layout, group_kinds=("attention",), layer_range=(0, 4)
    )
    with pytest.raises(ValueError, match=rf"cannot be met .* use the nearest feasible pruning_ratio {nearest}\b"):
        HyWIAPruner(model, config).prune(show_progress=False)
    assert_same_state(before, model_state(model))
    # the suggested ratio works
    pruner = HyWIAPruner(model, dataclasses.replace(config, pruning_ratio=float(nearest)))
    pruner.prune(show_progress=False)
    assert pruner.report.achieved_ratio == pytest.approx(float(nearest), abs=1e-3)


@pytest.mark.parametrize("layout", ["uniform", "per_layer"])
def test_the_largest_ratio_still_keeps_one_group_of_each_kind_per_layer(layout, token_batch):
    model = make_tiny_model("llama-gqa")
    # the most attention alone can give: one of the two KV-head groups of every layer (17.86% of the decoder)
    config = tiny_config(
        pruning_ratio=0.178, importance="l2", layout=layout, group_kinds=("attention",), layer_range=(0, 4)
    )
    pruner = HyWIAPruner(model, config)
    pruner.prune(show_progress=False)
    for layer in pruner.report.layers:
        assert layer["after"]["num_key_value_heads"] == 1
    with pytest.raises(ValueError, match=r"can give at most 20,480 \(17.9%\) while keeping one group"):
        HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(pruning_ratio=0.21, group_kinds=("attention",))).prune(
            show_progress=False
        )
    # both kinds at 80% (the most is 80.8%): each layer keeps one KV-head group and a few channels
    config = tiny_config(pruning_ratio=0.8, importance="l2", layout=layout, round_to=2, layer_range=(0, 4))
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), config)
    pruner.prune(show_progress=False)
    assert all(layer["after"]["num_key_value_heads"] >= 1 for layer in pruner.report.layers)
    assert all(layer["after"]["intermediate_size"] >= 2 for layer in pruner.report.layers)


def test_calibration_token_ids_outside_the_vocabulary_are_refused():
    model = make_tiny_model("llama-gqa")
    before = model_state(model)
    ids = torch.randint(3, VOCAB, (8, 32), generator=torch.Generator().manual_seed(0))
    ids[3, 7] = VOCAB + 5
    with pytest.raises(ValueError, match=rf"span \[3, {VOCAB + 5}\] but the model's vocabulary is \[0, {VOCAB}\)"):
        HyWIAPruner(model, tiny_config()).prune(ids, show_progress=False)
    with pytest.raises(ValueError, match="tokenize with the model's own tokenizer"):
        HyWIAPruner(model, tiny_config()).prune(-ids, show_progress=False)
    assert_same_state(before, model_state(model))


def test_nan_in_the_loss_suggests_bf16_or_fp32(token_batch):
    model = make_tiny_model("llama-gqa")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"calibration loss is NaN or infinite.*float32.*bfloat16"):
        HyWIAPruner(model, tiny_config()).prune(token_batch, show_progress=False)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_infinite_gradients_with_a_finite_loss_are_refused(token_batch):
    model = make_tiny_model("llama-gqa")
    before = model_state(model)
    weight = model.model.layers[2].self_attn.k_proj.weight
    handle = weight.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(FloatingPointError, match=r"gradient statistics of layer 2 \(attention\) is NaN or infinite"):
        HyWIAPruner(model, tiny_config(importance="element1")).prune(token_batch, show_progress=False)
    handle.remove()
    assert_same_state(before, model_state(model))


def test_a_quantized_model_is_refused_untouched(token_batch):
    model = make_tiny_model("llama-gqa")

    class FakeBitsAndBytesQuantizer:
        quantization_config = type("Config", (), {"quant_method": "bitsandbytes"})()

    model.hf_quantizer = FakeBitsAndBytesQuantizer()
    with pytest.raises(ValueError, match=r"The model is quantized \(bitsandbytes\).*prune, then quantize"):
        HyWIAPruner(model, tiny_config()).prune(token_batch, show_progress=False)
    assert isinstance(model.hf_quantizer, FakeBitsAndBytesQuantizer)


def test_a_meta_device_model_is_refused(token_batch):
    with torch.device("meta"):
        model = make_tiny_model("llama-gqa")
    with pytest.raises(ValueError, match=r"is on the meta device .*needs every weight resident"):
        HyWIAPruner(model, tiny_config()).prune(token_batch, show_progress=False)


# --- a failed prune --------------------------------------------------------------------------------------------------


def _fail_in_fusion(monkeypatch):
    from optimum_hywia.importance import fusion

    original = fusion.HybridFusion.soft_masks
    calls = []

    def soft_masks_then_fail(self, scores, temperature):
        calls.append(temperature)
        if len(calls) == 2:
            raise KeyboardInterrupt("interrupted during fusion training")
        return original(self, scores, temperature)

    monkeypatch.setattr(fusion.HybridFusion, "soft_masks", soft_masks_then_fail)
    return KeyboardInterrupt, "interrupted during fusion"


FAILURES_BEFORE_SURGERY = {
    "impossible ratio": (dict(pruning_ratio=0.95, group_kinds=("attention",)), None, (ValueError, "lower the ratio")),
    "round_to too large": (dict(round_to=512), None, (ValueError, "round_to=512 is larger")),
    "layer_range past the model": (dict(layer_range=(0, 9)), None, (ValueError, "goes past the model's 4")),
    "too little calibration data": (dict(), torch.arange(3, 30), (ValueError, "needs sequence_length=32 tokens")),
    "interrupted fusion training": (dict(), None, _fail_in_fusion),
}


@pytest.mark.parametrize("failure", list(FAILURES_BEFORE_SURGERY))
def test_errors_before_surgery_leave_the_model_untouched_and_usable(failure, token_batch, monkeypatch):
    overrides, data, expected = FAILURES_BEFORE_SURGERY[failure]
    error, message = expected(monkeypatch) if callable(expected) else expected
    model = make_tiny_model("llama-gqa")
    before = model_state(model)
    inputs = torch.arange(3, 23)[None]
    with torch.no_grad():
        logits = model(inputs).logits
    with pytest.raises(error, match=message):
        HyWIAPruner(model, tiny_config(**overrides)).prune(token_batch if data is None else data, show_progress=False)
    assert_same_state(before, model_state(model))
    with torch.no_grad():
        assert torch.equal(model(inputs).logits, logits)
    monkeypatch.undo()
    HyWIAPruner(model, tiny_config(fusion_steps=1)).prune(token_batch, show_progress=False)  # still prunable


def test_a_failure_during_surgery_says_the_model_was_modified(monkeypatch):
    from optimum_hywia import pruner as pruner_module

    original = pruner_module.remove_groups

    def slice_two_sets_then_fail(group_sets, kept):
        original(group_sets[:2], kept)
        raise MemoryError("out of memory while slicing")

    monkeypatch.setattr(pruner_module, "remove_groups", slice_two_sets_then_fail)
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="l2"))
    with pytest.raises(RuntimeError, match=r"during surgery \(MemoryError: out of memory .*WAS MODIFIED.*reload it"):
        pruner.prune(show_progress=False)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="failed during surgery and left this model modified: reload it"):
        pruner.prune(show_progress=False)


# --- atomic saves ----------------------------------------------------------------------------------------------------

BLOCKING_SAVE = """
import os, sys, time
sys.path.insert(0, {tests!r})
import transformers.modeling_utils as modeling_utils
from safetensors.torch import save
from conftest import make_tiny_model
from optimum_hywia import HyWIAConfig, HyWIAPruner

def half_write_then_block(tensors, filename, metadata=None):
    data = save(tensors, metadata=metadata)
    with open(filename, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    open({marker!r}, "w").close()
    time.sleep(600)

modeling_utils.safe_save_file = half_write_then_block
pruner = HyWIAPruner(make_tiny_model("llama-gqa", seed=1), HyWIAConfig(pruning_ratio=0.4, importance="l2",
                     layout={layout!r}))
pruner.prune(show_progress=False)
pruner.save_pretrained({target!r}, overwrite=True)
"""


def _kill_mid_save(tmp_path: Path, target: Path, layout: str) -> None:
    """Run a save in a subprocess, SIGKILL it while model.safetensors is half written, and wait for it to die."""
    marker = tmp_path / "writing"
    code = BLOCKING_SAVE.format(tests=str(TESTS_DIR), marker=str(marker), target=str(target), layout=layout)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if process.poll() is not None:
                raise AssertionError(f"the saving process exited early:\n{process.stderr.read().decode()[-3000:]}")
            assert time.monotonic() < deadline, "the saving process never reached the safetensors write"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("layout", ["uniform", "per_layer"])
def test_a_save_killed_mid_write_leaves_the_previous_checkpoint_or_nothing(tmp_path, layout):
    target = tmp_path / "out"
    # first save killed: nothing at the destination
    _kill_mid_save(tmp_path, target, layout)
    assert not target.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").stat().st_size > 0  # really killed mid-write

    # a complete save: removes the dead process's staging folder
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="l2", layout=layout))
    pruner.prune(show_progress=False)
    pruner.save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "writing"]
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    # an overwrite killed mid-write: the previous checkpoint is intact and still loads
    (tmp_path / "writing").unlink()
    _kill_mid_save(tmp_path, target, layout)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    reloaded = load_pruned_model(target)
    assert sum(p.numel() for p in reloaded.parameters()) == pruner.report.params_after


def test_an_overwrite_swaps_the_folders_in_one_step_where_the_os_can(tmp_path, monkeypatch):
    from optimum_hywia.saving import exchange_paths

    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir()
    probe_b.mkdir()
    (probe_a / "marker").touch()
    if not exchange_paths(probe_a, probe_b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available on this OS / filesystem")
    assert (probe_b / "marker").exists() and not (probe_a / "marker").exists()

    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="l2"))
    pruner.prune(show_progress=False)
    target = pruner.save_pretrained(tmp_path / "out")
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((src, dst)), real_replace(src, dst))[1])
    pruner.save_pretrained(target, overwrite=True)
    assert renames == []  # no moment without a complete `out`: no rename to `.out.old-*` and back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]
    assert (target / "model.safetensors").exists()


def test_only_staging_folders_of_dead_processes_are_cleaned(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dead = tmp_path / f".out.tmp-{dead_pid}-abc123"
        dead_backup = tmp_path / f".out.old-{dead_pid}"
        busy = tmp_path / f".out.tmp-{alive.pid}-def456"
        other = tmp_path / f".other.tmp-{dead_pid}-0"
        for folder in (dead, dead_backup, busy, other):
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"partial")
        pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="l2"))
        pruner.prune(show_progress=False)
        pruner.save_pretrained(tmp_path / "out")
        assert not dead.exists() and not dead_backup.exists()
        assert busy.exists() and other.exists()  # a concurrent save, and another destination's leftovers
    finally:
        alive.kill()
        alive.wait()


# --- determinism -----------------------------------------------------------------------------------------------------

DETERMINISM_RUN = """
import hashlib, json, sys, torch
sys.path.insert(0, {tests!r})
from conftest import make_tiny_model
from optimum_hywia import HyWIAConfig, HyWIAPruner

runs = {{}}
for importance, layout in {cases!r}:
    model = make_tiny_model("qwen2")
    data = torch.randint(3, 128, (12, 32), generator=torch.Generator().manual_seed(7))
    config = HyWIAConfig(pruning_ratio=0.35, importance=importance, layout=layout, num_calibration_samples=8,
                         calibration_sequence_length=16, calibration_batch_size=4, fusion_steps=4, seed=3)
    pruner = HyWIAPruner(model, config)
    pruner.prune(data, show_progress=False)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    runs[importance + "/" + layout] = {{"kept": pruner.report.kept_groups, "alpha": pruner.report.fusion_alpha,
                                       "weights": digest.hexdigest()}}
print(json.dumps(runs))
"""

# HyWIA (gradients, learned fusion) and a gradient baseline; `random` is seeded too (next test)
DETERMINISM_CASES = [("hywia", "per_layer"), ("element2", "uniform")]


def test_same_seed_and_data_give_identical_kept_groups_and_bitwise_weights():
    code = DETERMINISM_RUN.format(tests=str(TESTS_DIR), cases=DETERMINISM_CASES)
    in_process = []
    for _ in range(2):  # twice in this process
        lines = []
        exec(compile(code, "<determinism>", "exec"), {"print": lines.append})
        in_process.append(json.loads(lines[-1]))
    in_fresh_processes = [json.loads(run_python(code).strip().splitlines()[-1]) for _ in range(2)]
    assert in_process[0] == in_process[1]
    assert in_fresh_processes[0] == in_fresh_processes[1]
    assert in_process[0] == in_fresh_processes[0]
    hywia, baseline = in_process[0]["hywia/per_layer"], in_process[0]["element2/uniform"]
    assert hywia["alpha"] and hywia["kept"] != baseline["kept"]  # two different runs were compared, not one twice


def test_a_different_seed_changes_the_random_baseline():
    runs = []
    for seed in (0, 1):
        pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="random", seed=seed))
        pruner.prune(show_progress=False)
        runs.append(pruner.report.kept_groups)
    assert runs[0] != runs[1]


# --- security --------------------------------------------------------------------------------------------------------


def test_the_package_never_unpickles():
    offenders = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\b(pickle|cPickle|dill|joblib|marshal)\b", code) or re.search(r"\bnp\.load\(", code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
            if re.search(r"torch\.load\(", code) and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
            if re.search(r"use_safetensors\s*=\s*False", code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("layout", ["uniform", "per_layer"])
def test_saved_folders_hold_only_safetensors_and_the_packaged_modeling_file(layout, tmp_path):
    # 8 heads on hidden 64 pruned to 5 (attention alone) needs the override even for the uniform layout
    config = tiny_config(importance="l2", layout=layout, pruning_ratio=0.2, group_kinds=("attention",))
    pruner = HyWIAPruner(make_tiny_model("llama-mha"), config)
    pruner.prune(show_progress=False)
    folder = pruner.save_pretrained(tmp_path / "out")
    names = sorted(p.name for p in folder.rglob("*"))
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    assert "model.safetensors" in names
    assert (folder / "modeling_hywia.py").read_bytes() == Path(MODELING_FILE).read_bytes()
    assert Path(MODELING_FILE).parent == PACKAGE_DIR / "modeling"
    load_file(folder / "model.safetensors")  # a plain safetensors file


def _per_layer_checkpoint(tmp_path: Path) -> tuple[Path, dict]:
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="l2", layout="per_layer"))
    pruner.prune(show_progress=False)
    folder = pruner.save_pretrained(tmp_path / "ckpt")
    return folder, json.loads((folder / "config.json").read_text())


def _write_config(folder: Path, config: dict) -> None:
    (folder / "config.json").write_text(json.dumps(config))


def test_per_layer_tensors_that_disagree_with_declared_widths_are_refused(tmp_path):
    folder, config = _per_layer_checkpoint(tmp_path)
    shapes = config["hywia_linear_shapes"]
    gate = next(path for path in shapes if path.endswith("mlp.gate_proj"))
    declared = list(shapes[gate])
    shapes[gate] = [declared[0] + 8, declared[1]]
    _write_config(folder, config)
    with pytest.raises(
        ValueError,
        match=rf"declares {re.escape(gate)} as \[{declared[0] + 8}, 64\] but the checkpoint's "
        rf"{re.escape(gate)}.weight is \[{declared[0]}, 64\]: the checkpoint is inconsistent",
    ):
        load_pruned_model(folder)
    shapes[gate] = declared
    shapes["model.layers.0.mlp.extra_proj"] = [4, 64]
    _write_config(folder, config)
    with pytest.raises(ValueError, match=r"declares model.layers.0.mlp.extra_proj but the checkpoint holds no tensor"):
        load_pruned_model(folder)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("../../../outside", [4, 4], r"key '../../../outside' is not a module path"),
        ("/etc/passwd", [4, 4], r"key '/etc/passwd' is not a module path"),
        ("model.layers.0.mlp.gate_proj", "/etc/passwd", r"must be \[out_features, in_features\]"),
        ("model.layers.0.mlp.gate_proj", [-1, 64], r"must be \[out_features, in_features\]"),
    ],
    ids=["key-parent-traversal", "key-absolute-path", "value-path-string", "value-negative"],
)
def test_malicious_config_values_are_never_used_as_paths(tmp_path, key, value, message):
    folder, config = _per_layer_checkpoint(tmp_path)
    config["hywia_linear_shapes"][key] = value
    _write_config(folder, config)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=message):
        load_pruned_model(folder)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_shard_index_cannot_point_outside_the_checkpoint(tmp_path):
    folder, config = _per_layer_checkpoint(tmp_path)
    outside = tmp_path / "outside.safetensors"
    (folder / "model.safetensors").rename(outside)
    weight_map = {name: "../outside.safetensors" for name in load_file(outside)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(ValueError, match=r"names the shard '../outside.safetensors', which is not a file inside"):
        load_pruned_model(folder)


def test_pickled_weights_are_never_loaded(tmp_path):
    folder, config = _per_layer_checkpoint(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(ValueError, match=r"holds no model.safetensors \(or its index\): HyWIA checkpoints are"):
        load_pruned_model(folder)


def test_checkpoint_file_hashes_are_reproducible(tmp_path):
    # the same pruned model saved twice gives byte-identical safetensors (no timestamps or random names inside)
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), tiny_config(importance="l2", layout="per_layer"))
    pruner.prune(show_progress=False)
    digests = []
    for name in ("a", "b"):
        folder = pruner.save_pretrained(tmp_path / name)
        digests.append(hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
