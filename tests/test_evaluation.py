"""Perplexity and throughput measurements."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import VOCAB, make_tiny_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from optimum_hywia.data import wikipedia_texts
from optimum_hywia.evaluation import measure_throughput, perplexity, window_losses

TEXT_VOCAB = 512


@pytest.fixture(scope="module")
def articles() -> list[str]:
    return wikipedia_texts(max_articles=6)


@pytest.fixture(scope="module")
def tokenizer(articles):
    """A byte-level BPE tokenizer trained in-process on real Wikipedia text (no hub access)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TEXT_VOCAB, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(articles, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


@pytest.fixture(scope="module")
def random_model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def test_random_model_perplexity_on_real_text_is_near_the_vocabulary_size(random_model, tokenizer, articles):
    value = perplexity(random_model, tokenizer, articles, sequence_length=128, max_windows=8, show_progress=False)
    assert math.isfinite(value)
    assert 0.7 * len(tokenizer) < value < 1.5 * len(tokenizer)  # near-uniform predictions of an untrained model


def test_perplexity_of_one_window_is_the_model_loss(random_model, tokenizer, articles):
    ids = torch.tensor(tokenizer("\n\n".join(articles))["input_ids"][:128])[None]
    with torch.no_grad():
        expected = math.exp(float(random_model(input_ids=ids, labels=ids).loss))
    value = perplexity(random_model, tokenizer, articles, sequence_length=128, max_windows=1, show_progress=False)
    assert value == pytest.approx(expected, rel=1e-5)


def test_every_text_input_gives_the_same_perplexity(random_model, tokenizer, articles, tmp_path):
    from datasets import Dataset

    def score(text, **kwargs):
        kwargs = {"sequence_length": 64, "max_windows": 5, "show_progress": False, **kwargs}
        return perplexity(random_model, tokenizer, text, **kwargs)

    reference = score(articles)
    joined = "\n\n".join(articles)
    path = tmp_path / "eval.txt"
    path.write_text(joined, encoding="utf-8")
    ids = torch.tensor(tokenizer(joined)["input_ids"])
    for text in (joined, path, str(path), Dataset.from_dict({"n": [1] * len(articles), "text": articles}), ids):
        assert score(text) == pytest.approx(reference, rel=1e-6)
    assert score(articles, batch_size=2) == pytest.approx(reference, rel=1e-4)
    assert score(articles, max_windows=4) != pytest.approx(reference, rel=1e-6)  # windows really are counted


def test_perplexity_equals_the_mean_window_loss():
    model = make_tiny_model("llama-gqa")
    ids = torch.randint(3, VOCAB, (130,), generator=torch.Generator().manual_seed(0))
    value = perplexity(model, text=ids, sequence_length=32, show_progress=False)
    windows = ids[:128].view(4, 32)
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss for w in windows]
    assert value == pytest.approx(math.exp(float(torch.stack(losses).mean())), rel=1e-5)
    assert value == pytest.approx(perplexity(model, text=ids, sequence_length=32, batch_size=3, show_progress=False))
    for batch_size in (1, 3):  # each window's own loss, however the windows are batched
        per_window = window_losses(model, windows, batch_size, show_progress=False)
        assert per_window == pytest.approx([float(loss) for loss in losses], rel=1e-5)
    assert not model.training


def test_spread_windows_sample_the_whole_text():
    model = make_tiny_model("llama-gqa")
    ids = torch.randint(3, VOCAB, (10 * 32 + 5,), generator=torch.Generator().manual_seed(1))
    windows = ids[:320].view(10, 32)

    def score(text, **kwargs):
        return perplexity(model, text=text, sequence_length=32, show_progress=False, **kwargs)

    # 3 windows out of 10, evenly spaced: the first, the middle one (round(4.5) = 4) and the last
    assert score(ids, max_windows=3, spread=True) == pytest.approx(score(windows[[0, 4, 9]].flatten()), rel=1e-6)
    assert score(ids, max_windows=3) == pytest.approx(score(windows[:3].flatten()), rel=1e-6)
    assert score(ids, max_windows=10, spread=True) == pytest.approx(score(ids), rel=1e-6)
    assert score(ids, max_windows=50, spread=True) == pytest.approx(score(ids), rel=1e-6)


@pytest.mark.parametrize(
    "text, kwargs, message",
    [
        (torch.arange(10), {}, "has 10 tokens, fewer than one window of sequence_length=32"),
        ("short text", {}, "fewer than one window of sequence_length=32"),
        ("some text", {"tokenizer": None}, "needs a tokenizer"),
        (torch.rand(64), {}, "must be an integer tensor"),
        ({"text": "x"}, {}, "Unsupported evaluation text of type dict"),
        (torch.arange(64), {"sequence_length": 1}, "sequence_length >= 2"),
        (torch.arange(64), {"batch_size": 0}, "batch_size >= 1"),
    ],
)
def test_bad_evaluation_input_gets_a_clear_error(random_model, tokenizer, text, kwargs, message):
    kwargs = {"tokenizer": tokenizer, "sequence_length": 32, "show_progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        perplexity(random_model, text=text, **kwargs)


def test_throughput_reports_positive_rates_without_deprecation_warnings():
    model = make_tiny_model("llama-gqa")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = measure_throughput(model, batch_size=2, prompt_length=16, new_tokens=4, repeats=2, vocab_size=50)
    assert set(result) == {"prefill_tokens_per_s", "decode_tokens_per_s", "batch_size", "prompt_length", "new_tokens"}
    assert result["prefill_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0
    assert (result["batch_size"], result["prompt_length"], result["new_tokens"]) == (2, 16, 4)
    assert not model.training
    with pytest.raises(ValueError, match="must be >= 1"):
        measure_throughput(model, new_tokens=0)


def test_records_files_and_tokenized_datasets_are_evaluation_text_too(random_model, tokenizer, articles, tmp_path):
    import json

    from datasets import Dataset

    def score(text):
        return perplexity(random_model, tokenizer, text, sequence_length=64, max_windows=3, show_progress=False)

    reference = score(articles)
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"text": article}) + "\n" for article in articles))
    assert score(tmp_path / "eval.jsonl") == pytest.approx(reference, rel=1e-6)  # the text of each record
    ids = tokenizer("\n\n".join(articles), add_special_tokens=False)["input_ids"][: 3 * 64]
    assert score(Dataset.from_dict({"input_ids": [ids]})) == pytest.approx(reference, rel=1e-6)
    assert score(torch.tensor(ids).view(3, 64)) == pytest.approx(reference, rel=1e-6)  # rows: one stream
    with pytest.raises(ValueError, match="Unsupported evaluation text of type int: pass a string of text, a list"):
        score(3)
