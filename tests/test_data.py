"""Calibration data from every accepted source, and the packaged offline assets."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from optimum_hywia.data import lambada_texts, prepare_calibration_data, smollm2_gguf, wikipedia_texts
from optimum_hywia.data.text_sources import clean_wikitext

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex every jovial bystander".split()


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {"<eos>": 0, "<unk>": 1, **{word: i + 2 for i, word in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")


TEXTS = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]  # rotations of one sentence


def test_strings_are_joined_with_eos_and_cut_into_windows(tokenizer):
    samples = prepare_calibration_data(TEXTS, tokenizer, num_samples=100, sequence_length=8)
    tokens = len(TEXTS) * (len(WORDS) + 1)  # every document, then EOS
    assert samples.shape == (tokens // 8, 8)
    assert samples.dtype == torch.long
    assert samples.flatten()[len(WORDS)].item() == tokenizer.eos_token_id


def test_subset_is_seeded(tokenizer):
    first = prepare_calibration_data(TEXTS, tokenizer, num_samples=5, sequence_length=8, seed=1)
    again = prepare_calibration_data(TEXTS, tokenizer, num_samples=5, sequence_length=8, seed=1)
    other = prepare_calibration_data(TEXTS, tokenizer, num_samples=5, sequence_length=8, seed=2)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_text_file_dataset_and_token_inputs(tokenizer, tmp_path):
    from datasets import Dataset

    expected = prepare_calibration_data(TEXTS, tokenizer, num_samples=4, sequence_length=8)
    path = tmp_path / "calibration.txt"
    path.write_text("\n".join(TEXTS))
    assert prepare_calibration_data(str(path), tokenizer, num_samples=4, sequence_length=8).shape == (4, 8)
    assert prepare_calibration_data(path, tokenizer, num_samples=4, sequence_length=8).shape == (4, 8)
    dataset = Dataset.from_dict({"id": list(range(len(TEXTS))), "text": TEXTS})
    assert torch.equal(prepare_calibration_data(dataset, tokenizer, num_samples=4, sequence_length=8), expected)
    ids = torch.arange(3, 103)
    assert prepare_calibration_data(ids, num_samples=10, sequence_length=10).tolist()[0] == list(range(3, 13))
    assert prepare_calibration_data(ids.view(4, 25), num_samples=10, sequence_length=10).shape == (8, 10)
    assert prepare_calibration_data([[1, 2, 3, 4], torch.arange(8)], num_samples=5, sequence_length=4).shape == (3, 4)


@pytest.mark.parametrize(
    "data, kwargs, message",
    [
        ([], {}, "calibration data is empty"),
        ("not a file.txt", {}, "is not an existing file"),
        (TEXTS, {"tokenizer": None}, "needs a tokenizer"),
        (torch.rand(4, 8), {}, "must be an integer tensor"),
        (torch.arange(5), {}, "yields 5 tokens but one sample needs sequence_length=8"),
        ({"text": "x"}, {}, "Unsupported calibration data of type dict"),
        (torch.arange(50), {"num_samples": 0}, "must be >= 1"),
    ],
)
def test_bad_calibration_data_gets_a_clear_error(tokenizer, data, kwargs, message):
    kwargs = {"tokenizer": tokenizer, "sequence_length": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        prepare_calibration_data(data, **kwargs)


def test_wikitext_markup_becomes_prose():
    raw = "'''Paris''' is the [[capital city|capital]] of [[France]].{{cite web|url={{x}}}}<ref>Source</ref>"
    raw += "[[File:Eiffel.jpg|thumb|The [[Eiffel Tower|tower]] at night]]\n== History =="
    assert clean_wikitext(raw) == "Paris is the capital of France.\nHistory"


def test_packaged_assets_are_real():
    folder, name = smollm2_gguf()
    assert (folder / name).stat().st_size > 50_000_000
    articles = wikipedia_texts()
    assert len(articles) >= 20
    assert sum(map(len, articles)) / len(articles) > 1000
    assert not any(marker in article for article in articles for marker in ("{{", "[[", "<ref"))
    passages = lambada_texts()
    assert len(passages) > 5000 and all(len(p) > 100 for p in passages[:100])
