"""Property-based tests (hypothesis) over random tiny models: prune -> save -> reload gives the masked original.

For every family that both `optimum_hywia.architectures.ARCHITECTURES` supports and `conftest.TINY_MODELS` can
build, hypothesis draws layer counts, head / KV-head counts, head and MLP widths, ratios, layouts, group kinds,
`round_to` and estimators. Each draw either fails before surgery with a clear `ValueError` (an infeasible ratio,
`round_to` wider than the MLP), leaving the model untouched, or prunes, and then:

- the pruned model's logits equal those of the original with the removed groups masked to zero,
- every pruned layer keeps at least one group of each kind,
- the saved folder holds safetensors only and reloads (`load_pruned_model`, and vanilla transformers when the
  report says the config is vanilla) to the same logits.

Examples are few and derandomized so that CI time stays bounded and failures reproduce.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODELS, VOCAB, make_tiny_model, masked_logits
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from optimum_hywia import HyWIAConfig, HyWIAPruner, load_pruned_model
from optimum_hywia.architectures import ARCHITECTURES


def _families() -> list[str]:
    """One TINY_MODELS causal-LM builder per supported model_type (the config class decides the model_type)."""
    chosen: dict[str, str] = {}
    for name, (model_class, config_class, _) in TINY_MODELS.items():
        model_type = getattr(config_class, "model_type", None)
        if model_type in ARCHITECTURES and model_class.__name__.endswith(("ForCausalLM", "LMHeadModel")):
            chosen.setdefault(model_type, name)
    return sorted(chosen.values())


FAMILIES = _families()
# a fixed budget shared by the families, so that adding families does not grow CI time without bound
EXAMPLES_PER_FAMILY = max(3, 30 // max(len(FAMILIES), 1))
FEASIBILITY_ERRORS = ("cannot be met", "can give at most", "is larger than layer", "leaves no pruned head count")

calibration_batch = torch.randint(3, VOCAB, (4, 16), generator=torch.Generator().manual_seed(11))
probe_inputs = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(12))


@st.composite
def pruning_cases(draw) -> dict:
    kv_heads = draw(st.integers(1, 4))
    heads = kv_heads * draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([4, 8]))
    model = dict(
        num_hidden_layers=draw(st.integers(1, 3)),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_size=heads * head_dim,
        head_dim=head_dim,
        intermediate_size=draw(st.integers(4, 48)),
    )
    config = dict(
        pruning_ratio=draw(st.floats(0.05, 0.75)),
        layout=draw(st.sampled_from(["uniform", "per_layer"])),
        group_kinds=draw(st.sampled_from([("attention", "mlp"), ("mlp",), ("attention",)])),
        round_to=draw(st.sampled_from([1, 1, 2, 4])),
        head_round_to=draw(st.sampled_from([1, 1, 1, 2])),
        importance=draw(st.sampled_from(["l2", "random", "element1", "hywia"])),
        seed=draw(st.integers(0, 3)),
    )
    if model["num_hidden_layers"] > 1 and draw(st.booleans()):
        config["layer_range"] = (1, model["num_hidden_layers"])
    return {"model": model, "config": config}


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.skipif(not FAMILIES, reason="conftest builds no supported family")
@pytest.mark.parametrize("family", FAMILIES)
@settings(
    max_examples=EXAMPLES_PER_FAMILY,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=pruning_cases())
def test_prune_save_reload_equals_the_masked_original(family, case, tmp_path_factory):
    try:
        model = make_tiny_model(family, **case["model"])
    except (ValueError, TypeError):  # a family whose config rejects this combination (e.g. MHA only)
        assume(False)
    config = HyWIAConfig(
        num_calibration_samples=4,
        calibration_sequence_length=16,
        calibration_batch_size=2,
        fusion_steps=2,
        reconstruction="none",  # the properties compare the pruned model with the masked dense one
        **case["config"],
    )
    reference = copy.deepcopy(model)
    before = _weights(model)
    pruner = HyWIAPruner(model, config)
    try:
        pruned = pruner.prune(calibration_batch, show_progress=False)
    except ValueError as error:
        event("refused before surgery")
        assert any(reason in str(error) for reason in FEASIBILITY_ERRORS), error
        assert "\n" not in str(error)  # one line that says what to do
        after = _weights(model)
        assert all(torch.equal(before[name], after[name]) for name in before)  # refused before surgery
        return

    report = pruner.report
    event(f"pruned, {config.layout}, {'vanilla config' if report.vanilla_config else 'modeling override'}")
    with torch.no_grad():
        logits = pruned(probe_inputs).logits
    torch.testing.assert_close(logits, masked_logits(reference, pruner, probe_inputs), rtol=1e-5, atol=1e-5)
    for layer in report.layers:
        assert layer["after"]["num_key_value_heads"] >= 1 and layer["after"]["intermediate_size"] >= 1
    assert sum(p.numel() for p in pruned.parameters()) == report.params_after
    assert report.achieved_ratio > 0

    folder = pruner.save_pretrained(Path(tmp_path_factory.mktemp("pruned")) / "out")
    assert not [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    reloaded = load_pruned_model(folder)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(probe_inputs).logits, logits, rtol=0, atol=1e-6)
    if report.vanilla_config:
        vanilla = AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            torch.testing.assert_close(vanilla(probe_inputs).logits, logits, rtol=0, atol=1e-6)
