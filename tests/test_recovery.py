"""LoRA recovery: training improves the pruned model, merging leaves a plain model, runs resume exactly."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_MODELS, VOCAB, arithmetic_sequences, make_tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from optimum_hywia import HyWIAConfig, HyWIAPruner, load_pruned_model
from optimum_hywia.recovery import (
    IGNORE_INDEX,
    RECOVERY_LOG_NAME,
    RecoveryConfig,
    build_examples,
    default_target_modules,
    recover,
)
from optimum_hywia.recovery import _train_step as real_train_step

WORDS = [f"w{i}" for i in range(VOCAB - 4)]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>", unk_token="<unk>"
    )


def pruned_tiny(name: str, layout: str):
    model = make_tiny_model(name)
    pruner = HyWIAPruner(model, HyWIAConfig(pruning_ratio=0.3, layout=layout, importance="l2"))
    pruner.prune(show_progress=False)
    return pruner


def mean_loss(model, batch: torch.Tensor) -> float:
    with torch.no_grad():
        return model(input_ids=batch, labels=batch).loss.item()


FAST = dict(sequence_length=32, batch_size=8, learning_rate=1e-2, lr_scheduler="constant", dropout=0.0)


@pytest.mark.parametrize(
    "name, layout", [*((name, "per_layer") for name in sorted(TINY_MODELS)), ("llama-gqa", "uniform")]
)
def test_recovery_lowers_the_loss_and_merges_into_a_plain_model(name, layout, tmp_path):
    pruner = pruned_tiny(name, layout)
    model = pruner.model
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    embeddings = model.get_input_embeddings().weight.detach().clone()
    data = arithmetic_sequences(16, seed=3)
    before = mean_loss(model, data)

    result = recover(model, None, data, RecoveryConfig(max_steps=10, **FAST), tmp_path)

    assert result is model
    assert mean_loss(result, data) < before - 0.5  # it fits the data it trains on
    assert not any("lora" in key for key in result.state_dict())
    assert {key: value.shape for key, value in result.state_dict().items()} == shapes  # per-layer widths kept
    assert torch.equal(result.get_input_embeddings().weight, embeddings)  # only the adapted projections change
    log = json.loads((tmp_path / RECOVERY_LOG_NAME).read_text())
    assert log["steps"] == 10 and len(log["losses"]) == 10 and log["final_loss"] < log["initial_loss"]

    # the merged model saves and reloads as an ordinary pruned checkpoint
    folder = pruner.save_pretrained(tmp_path / "saved")
    reloaded = load_pruned_model(folder)
    assert torch.allclose(reloaded(data).logits, result(data).logits, atol=1e-5)


def test_default_targets_are_the_family_projections_and_custom_targets_are_respected():
    model = make_tiny_model("qwen2")
    assert default_target_modules(model) == (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    before = {key: value.clone() for key, value in model.state_dict().items()}
    recover(
        model,
        None,
        arithmetic_sequences(32, seed=1),
        RecoveryConfig(max_steps=3, target_modules=["v_proj"], **FAST),
        show_progress=False,
    )
    changed = {key for key, value in model.state_dict().items() if not torch.equal(value, before[key])}
    assert changed == {f"model.layers.{i}.self_attn.v_proj.weight" for i in range(4)}


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import optimum_hywia.recovery as recovery

    config = RecoveryConfig(max_steps=8, save_steps=3, dropout=0.1, sequence_length=32, batch_size=4)
    data = arithmetic_sequences(40, seed=2)
    reference = recover(make_tiny_model("llama-gqa"), None, data, config, tmp_path / "straight", show_progress=False)

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_train_step(*args, **kwargs)

    monkeypatch.setattr(recovery, "_train_step", interrupted)
    model = make_tiny_model("llama-gqa")
    with pytest.raises(KeyboardInterrupt):
        recover(model, None, data, config, tmp_path / "resumed", show_progress=False)
    assert not any("lora" in key for key in model.state_dict())  # the caller gets its model back without adapters
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 5
    monkeypatch.setattr(recovery, "_train_step", real_train_step)

    resumed = recover(make_tiny_model("llama-gqa"), None, data, config, tmp_path / "resumed", show_progress=False)
    assert resumed.hywia_recovery_log.resumed_from_step == 5
    assert resumed.hywia_recovery_log.losses == pytest.approx(reference.hywia_recovery_log.losses, abs=1e-6)
    for (key, value), expected in zip(resumed.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(value, expected, atol=1e-6), key

    # a finished run in the folder is reused as is; a different run there is refused with what changed
    again = recover(make_tiny_model("llama-gqa"), None, data, config, tmp_path / "resumed", show_progress=False)
    assert again.hywia_recovery_log.resumed_from_step == 8
    other = RecoveryConfig(max_steps=8, save_steps=3, dropout=0.1, sequence_length=32, batch_size=4, rank=4)
    with pytest.raises(ValueError, match="different run .*config.*delete"):
        recover(make_tiny_model("llama-gqa"), None, data, other, tmp_path / "resumed", show_progress=False)


def test_gradient_accumulation_equals_one_large_batch():
    data = arithmetic_sequences(32, seed=4)
    large = recover(
        make_tiny_model("mistral"), None, data, RecoveryConfig(max_steps=2, **FAST), show_progress=False
    ).state_dict()
    settings = dict(FAST, batch_size=4)
    accumulated = recover(
        make_tiny_model("mistral"),
        None,
        data,
        RecoveryConfig(max_steps=2, gradient_accumulation_steps=2, **settings),
        show_progress=False,
    ).state_dict()
    for key, value in large.items():
        assert torch.allclose(value, accumulated[key], atol=1e-5), key


def test_text_sources_give_the_same_examples(tokenizer, tmp_path):
    import datasets

    config = RecoveryConfig(sequence_length=8)
    texts = [" ".join(WORDS[i : i + 13]) for i in range(0, 60, 3)]
    expected, data_format = build_examples(texts, tokenizer, config)
    assert data_format == "text" and all(len(ids) == 8 and ids.equal(labels) for ids, labels in expected)
    stream = torch.cat([ids for ids, _ in expected])
    assert stream[13] == tokenizer.eos_token_id  # documents joined with EOS

    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "data.json").write_text(json.dumps(texts))
    for source in (tmp_path / "data.jsonl", str(tmp_path / "data.json"), datasets.Dataset.from_dict({"text": texts})):
        examples, _ = build_examples(source, tokenizer, config)
        assert all(a[0].equal(b[0]) for a, b in zip(examples, expected)) and len(examples) == len(expected)
    (tmp_path / "data.txt").write_text("\n".join(texts))  # a text file is one document
    from_text_file, _ = build_examples(tmp_path / "data.txt", tokenizer, config)
    one_document, _ = build_examples(["\n".join(texts)], tokenizer, config)
    assert len(from_text_file) == len(one_document) < len(expected)
    assert all(a[0].equal(b[0]) for a, b in zip(from_text_file, one_document))


def test_instruction_data_trains_on_responses_only(tokenizer, tmp_path):
    config = RecoveryConfig(sequence_length=64)
    records = [
        {"instruction": "w1 w2", "input": "w3", "output": "w4 w5"},
        {"prompt": "w6 w7 w8", "completion": "w9"},
        {"messages": [{"role": "user", "content": "w10"}, {"role": "assistant", "content": "w11 w12"}]},
    ]
    examples, data_format = build_examples(records, tokenizer, config)
    assert data_format == "instruction"
    responses = [["w4", "w5", "<eos>"], ["w9", "<eos>"], ["w11", "w12", "<eos>"]]
    for (ids, labels), response in zip(examples, responses):
        assert tokenizer.convert_ids_to_tokens(labels[labels != IGNORE_INDEX].tolist()) == response
        assert ids[labels != IGNORE_INDEX].equal(labels[labels != IGNORE_INDEX])
    assert tokenizer.convert_ids_to_tokens(examples[1][0][:3].tolist()) == ["w6", "w7", "w8"]

    # with a chat template, conversations are rendered by it and only the assistant turn is learned
    chat = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<eos>", pad_token="<pad>")
    chat.chat_template = "{% for m in messages %}w{{ loop.index }}0 {{ m['content'] }} {% endfor %}"
    chat.chat_template += "{% if add_generation_prompt %}w99 {% endif %}"
    ids, labels = build_examples([records[2]], chat, config)[0][0]
    assert chat.convert_ids_to_tokens(ids.tolist()) == ["w10", "w10", "w99", "w11", "w12", "<eos>"]
    assert (labels[:3] == IGNORE_INDEX).all() and labels[3:].equal(ids[3:])

    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    from_file, _ = build_examples(tmp_path / "chat.jsonl", tokenizer, config)
    assert all(a[1].equal(b[1]) for a, b in zip(from_file, examples))


def test_recovery_on_instruction_text_end_to_end(tokenizer):
    model = make_tiny_model("llama-gqa")
    records = [{"prompt": " ".join(WORDS[i : i + 4]), "completion": WORDS[i + 4]} for i in range(40)]
    held_out = build_examples(records[:8], tokenizer, RecoveryConfig())[0]
    batch_ids = torch.stack([ids for ids, _ in held_out])
    batch_labels = torch.stack([labels for _, labels in held_out])

    def response_loss() -> float:
        with torch.no_grad():
            return model(input_ids=batch_ids, labels=batch_labels).loss.item()

    before = response_loss()
    recover(model, tokenizer, records, RecoveryConfig(max_steps=15, **FAST), show_progress=False)
    assert response_loss() < before - 0.5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rank=0), "rank must be >= 1"),
        (dict(learning_rate=-1.0), "learning_rate must be a number > 0"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(data_format="chat"), "data_format must be one of"),
        (dict(lr_scheduler="step"), "lr_scheduler must be one of"),
        (dict(sequence_length=1), "sequence_length must be >= 2"),
        (dict(target_modules=[]), "target_modules must be a non-empty list"),
        (dict(max_steps=2.5), "max_steps must be an integer"),
    ],
)
def test_bad_config_gets_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecoveryConfig(**kwargs)


def test_only_causal_language_models_are_recovered():
    from transformers import BertConfig, BertModel

    encoder = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="trains causal language models .*got BertModel"):
        recover(encoder, None, arithmetic_sequences(4, seed=0), show_progress=False)


@pytest.mark.parametrize(
    "data, kwargs, message",
    [
        ("no/such/file.txt", {}, "not an existing file"),
        ([], {}, "empty"),
        (["w1 w2"], {"tokenizer": None}, "needs a tokenizer"),
        ([{"question": "w1"}], {"data_format": "instruction"}, "needs 'messages'"),
        ([{"title": "w1"}], {}, "must be a string or have a 'text' field"),
        (torch.rand(3, 4), {}, "integer tensor"),
        (arithmetic_sequences(4, seed=0), {"target_modules": ["c_attn"]}, r"\['c_attn'\] name no linear layer"),
    ],
)
def test_bad_data_gets_a_clear_error(tokenizer, data, kwargs, message):
    tokenizer = kwargs.pop("tokenizer", tokenizer)
    with pytest.raises(ValueError, match=message):
        recover(make_tiny_model("llama-gqa"), tokenizer, data, RecoveryConfig(**kwargs), show_progress=False)
