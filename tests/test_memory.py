"""Memory-lean calibration passes, the memory estimate, its refusal, and offloaded models."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import make_tiny_model
from test_families import FAMILIES, _tiny_bert, make_family_model
from transformers.pytorch_utils import Conv1D

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.architectures import get_architecture
from optimum_hywia.groups import decoder_layers, head_dim
from optimum_hywia.memory import (
    CalibrationModel,
    MemoryEstimate,
    check_calibration_memory,
    checkpointed_layers,
    estimate_calibration_memory,
)
from optimum_hywia.surgery import layer_widths

SPEC = get_architecture("llama")


def _saved_activation_bytes(model, ids) -> int:
    """Bytes autograd saves for backward in one forward pass (weights excluded): the activation memory."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids, labels=ids).loss.backward()
    return sum(size for pointer, size in saved.items() if pointer not in weights)


def test_activation_estimate_is_within_a_factor_of_two_of_what_autograd_saves():
    model = make_tiny_model("llama-gqa", intermediate_size=256, vocab_size=512)
    for param in model.parameters():
        param.requires_grad_(param.ndim == 2 and param.shape[0] != 512)  # the pruned projections, as in calibration
    ids = torch.randint(3, 512, (8, 64), generator=torch.Generator().manual_seed(0))
    measured = _saved_activation_bytes(model, ids)
    estimate = estimate_calibration_memory(model, SPEC, batch_size=8, sequence_length=64)
    assert measured / 2 < estimate.activations < 2 * measured
    parameters = sum(p.numel() * 4 for p in {id(p): p for p in model.parameters()}.values())
    assert estimate.weights == parameters + sum(b.numel() * b.element_size() for b in model.buffers())


# configs with the widths only under the family's own keys (`make_family_model` also passes `intermediate_size`)
NATIVE_CONFIGS = {
    "falcon-ffn_hidden_size": (
        "FalconForCausalLM",
        "FalconConfig",
        dict(num_attention_heads=8, num_kv_heads=2, new_decoder_architecture=True, ffn_hidden_size=160),
    ),
    "opt-ffn_dim": ("OPTForCausalLM", "OPTConfig", dict(num_attention_heads=8, ffn_dim=160, word_embed_proj_dim=64)),
    "gpt2-n_inner-none": ("GPT2LMHeadModel", "GPT2Config", dict(n_head=8, bos_token_id=1, eos_token_id=2)),
}


def _native_model(name: str) -> torch.nn.Module:
    model_class, config_class, extra = NATIVE_CONFIGS[name]
    config = getattr(transformers, config_class)(vocab_size=128, hidden_size=64, num_hidden_layers=2, **extra)
    torch.manual_seed(0)
    return getattr(transformers, model_class)(config).eval()


@pytest.mark.parametrize("family", [*FAMILIES, "bert", *NATIVE_CONFIGS])
def test_the_estimate_reads_every_family_s_widths_through_its_table(family):
    """Weights, gradients, statistics and activations follow the widths the model really has, for every family
    (Falcon's `num_kv_heads`/`ffn_hidden_size`, Gemma 3's `text_config`, GPT-2's Conv1D layers, ...).

    Tolerance: weights and statistics exactly; gradients in (0, the float32 bytes of the trained decoder weights];
    activations within 1% of the documented formula evaluated on the widths read from the modules."""
    if family in NATIVE_CONFIGS:
        model = _native_model(family)
    else:
        model = _tiny_bert() if family == "bert" else make_family_model(family)
    spec = get_architecture(model.config)
    estimate = estimate_calibration_memory(model, spec, batch_size=4, sequence_length=16)

    parameters = {id(p): p for p in model.parameters()}.values()
    resident = sum(p.numel() * p.element_size() for p in parameters)
    assert estimate.weights == resident + sum(b.numel() * b.element_size() for b in model.buffers())

    _, layers = decoder_layers(model, spec)
    trained = sum(p.numel() * 4 for p in layers.parameters() if p.ndim == 2)
    for micro_batch_size in (None, 2):
        gradients = estimate_calibration_memory(model, spec, 4, 16, micro_batch_size=micro_batch_size).gradients
        assert 0 < gradients <= trained, micro_batch_size

    projections = [m for m in layers.modules() if isinstance(m, (torch.nn.Linear, Conv1D))]
    assert estimate.statistics == 3 * 8 * sum(m.weight.shape[0] + m.weight.shape[1] for m in projections)

    (widths,) = {tuple(w.items()) for w in layer_widths(model, spec)}
    widths = dict(widths)
    hidden = model.get_input_embeddings().weight.shape[1]
    attention = (2 * widths["num_attention_heads"] + 2 * widths["num_key_value_heads"]) * head_dim(model.config, spec)
    per_token = 8 * hidden + 5 * widths["intermediate_size"] + attention
    vocab = model.get_input_embeddings().weight.shape[0]
    expected = 4 * 16 * (len(layers) * per_token * 4 + 3 * vocab * 4)
    assert estimate.activations == pytest.approx(expected, rel=0.01)


def test_each_knob_lowers_the_estimate():
    model = make_tiny_model("llama-gqa")
    base = estimate_calibration_memory(model, SPEC, batch_size=8, sequence_length=64)
    for options in (dict(micro_batch_size=2), dict(gradient_checkpointing=True), dict(autocast_dtype="bfloat16")):
        lowered = estimate_calibration_memory(model, SPEC, batch_size=8, sequence_length=64, **options)
        assert lowered.activations < base.activations, options
    assert "GiB" in base.summary()


def test_the_output_fisher_counts_what_the_gradient_pass_keeps(token_batch):
    from optimum_hywia.groups import build_group_sets
    from optimum_hywia.importance.statistics import GradientStatistics

    model = make_tiny_model("llama-gqa")
    group_sets = build_group_sets(model, SPEC, range(4), ("attention", "mlp"))
    statistics = GradientStatistics(group_sets, output_fisher=True)
    statistics.collect(model, [token_batch], show_progress=False)
    kept = sum(fisher.numel() * fisher.element_size() for fisher in statistics.output_fisher.values())
    base = estimate_calibration_memory(model, SPEC, batch_size=8, sequence_length=64)
    with_fisher = estimate_calibration_memory(
        model, SPEC, batch_size=8, sequence_length=64, output_fisher_sets=len(group_sets)
    )
    assert with_fisher.statistics - base.statistics == kept > 0


def test_a_run_that_cannot_fit_is_refused_with_the_knobs_to_turn(monkeypatch, token_batch):
    estimate = MemoryEstimate(
        weights=10, activations=10 * 2**30, gradients=0, statistics=0, device="cpu", available=2**30
    )
    with pytest.raises(MemoryError, match="calibration_micro_batch_size.*gradient_checkpointing=True"):
        check_calibration_memory(estimate)
    check_calibration_memory(MemoryEstimate(10, 10, 0, 0, "cpu", available=2**30))  # fits: no error

    import optimum_hywia.memory

    monkeypatch.setattr(optimum_hywia.memory, "available_memory", lambda device: 1024)
    config = dict(num_calibration_samples=8, calibration_sequence_length=32, calibration_batch_size=4, fusion_steps=1)
    with pytest.raises(MemoryError, match="check_memory=False"):
        HyWIAPruner(make_tiny_model("llama-gqa"), HyWIAConfig(**config)).prune(token_batch, show_progress=False)
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), HyWIAConfig(check_memory=False, **config))
    pruner.prune(token_batch, show_progress=False)  # the knob to try anyway
    assert pruner.report.achieved_ratio > 0


def test_the_estimate_is_printed_before_calibration(capsys, token_batch):
    config = HyWIAConfig(
        importance="element1", num_calibration_samples=8, calibration_sequence_length=32, calibration_batch_size=4
    )
    HyWIAPruner(make_tiny_model("llama-gqa"), config).prune(token_batch, show_progress=True)
    assert "HyWIA calibration memory estimate on cpu" in capsys.readouterr().out


def test_lean_options_prune_like_the_plain_run(token_batch):
    """Micro-batches and checkpointing change the memory, not the result: the same groups are kept."""
    settings = dict(num_calibration_samples=8, calibration_sequence_length=32, calibration_batch_size=4, fusion_steps=2)
    kept = []
    for options in (dict(), dict(calibration_micro_batch_size=1, gradient_checkpointing=True)):
        pruner = HyWIAPruner(make_tiny_model("qwen2"), HyWIAConfig(layout="per_layer", **settings, **options))
        pruner.prune(token_batch, show_progress=False)
        kept.append(pruner.report.kept_groups)
        assert pruner.report.fusion_losses and all(loss == loss for loss in pruner.report.fusion_losses)
    assert kept[0] == kept[1]


def test_checkpointed_layers_restore_the_forward_and_match_the_logits():
    model = make_tiny_model("mistral")
    ids = torch.arange(3, 35)[None]
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
    layer = model.model.layers[0]
    with checkpointed_layers(model, SPEC):
        assert "forward" in vars(layer)
        logits = model(ids, use_cache=False).logits
        logits.sum().backward()
    assert "forward" not in vars(layer)
    torch.testing.assert_close(logits.detach(), expected)
    assert model.model.layers[0].mlp.up_proj.weight.grad is not None


def test_calibration_model_rejects_bad_options():
    model = make_tiny_model("llama-gqa")
    with pytest.raises(ValueError, match="autocast_dtype"):
        CalibrationModel(model, SPEC, autocast_dtype="float8")
    with pytest.raises(ValueError, match="micro_batch_size"):
        CalibrationModel(model, SPEC, micro_batch_size=0)


def test_auto_device_map_with_disk_offload_prunes_like_the_resident_model(tmp_path, token_batch):
    """accelerate's device_map with max_memory forcing disk offload leaves meta weights: pruned like resident ones."""
    from transformers import AutoModelForCausalLM

    make_tiny_model("llama-gqa").save_pretrained(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "model",
        device_map="auto",
        max_memory={"cpu": "200KB"},
        offload_folder=str(tmp_path / "offload"),
    )
    assert any(param.device.type == "meta" for param in model.parameters())
    resident = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    kept = []
    for candidate in (resident, model):
        pruner = HyWIAPruner(
            candidate,
            HyWIAConfig(
                importance="element2",
                num_calibration_samples=8,
                calibration_sequence_length=32,
                calibration_batch_size=4,
            ),
        )
        pruner.prune(token_batch, show_progress=False)
        kept.append(pruner.report.kept_groups)
    assert kept[0] == kept[1]
    inputs = torch.arange(3, 23)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(inputs).logits, resident(inputs).logits, rtol=1e-5, atol=1e-5)
