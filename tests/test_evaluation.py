"""Perplexity and throughput measurements."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import VOCAB, make_tiny_model

from optimum_hywia.evaluation import measure_throughput, perplexity


def test_perplexity_equals_the_mean_window_loss():
    model = make_tiny_model("llama-gqa")
    ids = torch.randint(3, VOCAB, (130,), generator=torch.Generator().manual_seed(0))
    value = perplexity(model, text=ids, sequence_length=32, show_progress=False)
    windows = ids[:128].view(4, 32)
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss for w in windows]
    assert value == pytest.approx(math.exp(float(torch.stack(losses).mean())), rel=1e-5)
    assert value == pytest.approx(perplexity(model, text=ids, sequence_length=32, batch_size=3, show_progress=False))
    assert perplexity(model, text=ids, sequence_length=32, max_windows=1, show_progress=False) == pytest.approx(
        math.exp(float(losses[0])), rel=1e-5
    )
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(model, text=ids[:10], sequence_length=32)


def test_throughput_reports_positive_rates():
    model = make_tiny_model("llama-gqa")
    result = measure_throughput(model, batch_size=2, prompt_length=16, new_tokens=4, repeats=2)
    assert result["prefill_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0
    assert (result["batch_size"], result["prompt_length"], result["new_tokens"]) == (2, 16, 4)
