"""Recovery on transformers.Trainer: training improves the pruned model, merging leaves a plain model, runs resume
exactly (after Ctrl-C or SIGKILL), distillation is the KL to the teacher."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    RecoveryTrainer,
    build_examples,
    default_target_modules,
    distillation_loss,
    recover,
    save_recovered_model,
)

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


def checkpoint_state(folder: Path) -> dict:
    """The trainer state of the one checkpoint Trainer keeps in `folder` (save_total_limit=1)."""
    (state,) = folder.glob("checkpoint-*/trainer_state.json")
    return json.loads(state.read_text())


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    config = RecoveryConfig(max_steps=8, save_steps=3, dropout=0.1, sequence_length=32, batch_size=4)
    data = arithmetic_sequences(40, seed=2)
    reference = recover(make_tiny_model("llama-gqa"), None, data, config, tmp_path / "straight", show_progress=False)

    calls = []
    real_training_step = RecoveryTrainer.training_step

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during step 6: the step ends, is saved, and training stops
        return real_training_step(self, *args, **kwargs)

    monkeypatch.setattr(RecoveryTrainer, "training_step", interrupted)
    model = make_tiny_model("llama-gqa")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (not a background job)
    try:
        with pytest.raises(KeyboardInterrupt):
            recover(model, None, data, config, tmp_path / "resumed", show_progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not any("lora" in key for key in model.state_dict())  # the caller gets its model back without adapters
    assert checkpoint_state(tmp_path / "resumed")["global_step"] == 6
    monkeypatch.setattr(RecoveryTrainer, "training_step", real_training_step)

    resumed = recover(make_tiny_model("llama-gqa"), None, data, config, tmp_path / "resumed", show_progress=False)
    assert resumed.hywia_recovery_log.resumed_from_step == 6
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


# ------------------------------------------------------------------------------------------------- distillation


def manual_kl(student_logits, teacher_logits, temperature):
    """KL(teacher || student) per predicting position, written out: sum_v p_t (log p_t - log p_s), times T^2."""
    p_teacher = torch.softmax(teacher_logits[:, :-1] / temperature, dim=-1)
    log_student = torch.log_softmax(student_logits[:, :-1] / temperature, dim=-1)
    return (p_teacher * (p_teacher.log() - log_student)).sum(-1) * temperature**2


def test_distillation_loss_is_the_kl_to_the_teacher_and_zero_for_the_teacher_itself():
    teacher = make_tiny_model("llama-gqa")
    student = pruned_tiny("llama-gqa", "per_layer").model
    data = arithmetic_sequences(8, seed=5)
    with torch.no_grad():
        student_logits, teacher_logits = student(data).logits, teacher(data).logits
        lm = student(input_ids=data, labels=data).loss.item()
    kl = manual_kl(student_logits, teacher_logits, 2.0)
    assert distillation_loss(student_logits, teacher_logits, data, 2.0).item() == pytest.approx(kl.mean().item())
    labels = data.clone()
    labels[:, :20] = IGNORE_INDEX  # only the positions that predict a label count, as in the LM loss
    masked = distillation_loss(student_logits, teacher_logits, labels, 2.0).item()
    assert masked == pytest.approx(kl[:, 19:].mean().item())

    # the first logged loss of a run is the mix on the untrained student (LoRA starts as a no-op)
    settings = dict(max_steps=1, batch_size=8, sequence_length=32, dropout=0.0, objective="distillation")
    config = RecoveryConfig(temperature=2.0, distillation_weight=0.75, **settings)
    log = recover(student, None, data, config, teacher=teacher, show_progress=False).hywia_recovery_log
    assert log.losses[0] == pytest.approx(0.75 * kl.mean().item() + 0.25 * lm, rel=1e-5)
    assert log.teacher is not None and log.config["objective"] == "distillation"

    twin = copy.deepcopy(teacher)
    log = recover(twin, None, data, RecoveryConfig(**settings), teacher=teacher, show_progress=False).hywia_recovery_log
    assert log.losses[0] == pytest.approx(0.0, abs=1e-6)


def test_distillation_lowers_the_kl_and_needs_a_teacher():
    teacher = make_tiny_model("llama-gqa")
    student = pruned_tiny("llama-gqa", "uniform").model
    data = arithmetic_sequences(16, seed=6)
    config = RecoveryConfig(objective="distillation", max_steps=10, **FAST)
    with pytest.raises(ValueError, match=r"^objective='distillation' needs .* pass teacher= .*--teacher\)\.$"):
        recover(student, None, data, config, show_progress=False)

    def kl() -> float:
        with torch.no_grad():
            return distillation_loss(student(data).logits, teacher(data).logits, data).item()

    before = kl()
    recover(student, None, data, config, teacher=teacher, show_progress=False)
    assert kl() < 0.7 * before


def test_full_fine_tuning_trains_every_weight(tmp_path):
    data = arithmetic_sequences(16, seed=3)
    model = make_tiny_model("qwen2")
    before, embeddings = mean_loss(model, data), model.get_input_embeddings().weight.detach().clone()
    config = RecoveryConfig(method="full", max_steps=6, save_steps=3, **dict(FAST, learning_rate=3e-3))
    recover(model, None, data, config, tmp_path, show_progress=False)
    assert mean_loss(model, data) < before - 0.5
    assert not torch.equal(model.get_input_embeddings().weight, embeddings)
    assert model.hywia_recovery_log.target_modules == [] and checkpoint_state(tmp_path)["global_step"] == 6
    again = recover(make_tiny_model("qwen2"), None, data, config, tmp_path, show_progress=False)  # reused as is
    assert again.hywia_recovery_log.resumed_from_step == 6
    for key, value in again.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


# ---------------------------------------------------------------------------------------- merged and saved model


@pytest.mark.parametrize("layout", ["uniform", "per_layer"])
def test_the_merged_model_has_no_adapters_and_loads_without_peft(layout, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    pruner = pruned_tiny("llama-gqa", layout)
    pruned = pruner.save_pretrained(tmp_path / "pruned")
    data = arithmetic_sequences(16, seed=3)
    model = recover(pruner.model, None, data, RecoveryConfig(max_steps=3, **FAST), show_progress=False)
    assert not [name for name, _ in model.named_modules() if "lora" in name]
    assert not hasattr(model, "peft_config") and type(model).__module__.startswith("transformers.")
    saved = save_recovered_model(model, None, pruned, tmp_path / "recovered")
    with safe_open(saved / "model.safetensors", "pt") as weights:
        assert not [key for key in weights.keys() if "lora" in key or "base_layer" in key]
    if layout == "uniform":
        reloaded = AutoModelForCausalLM.from_pretrained(saved)  # vanilla transformers
    else:
        reloaded = load_pruned_model(saved)  # the modeling override
    with torch.no_grad():
        assert torch.allclose(reloaded(data).logits, model(data).logits, atol=1e-5)


# ----------------------------------------------------------------------------------------------- kills (SIGKILL)

TESTS = str(Path(__file__).parent)
KILLED_SETTINGS = dict(max_steps=12, save_steps=3, dropout=0.1, sequence_length=32, batch_size=4)


def start_python(code: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    prelude = f"import sys, time\nsys.path.insert(0, {TESTS!r})\n"
    return subprocess.Popen([sys.executable, "-c", prelude + code], env=env, stderr=subprocess.PIPE, text=True)


def kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()  # SIGKILL: no handler runs
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr[-3000:]


def test_a_run_killed_after_its_first_checkpoint_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    data = arithmetic_sequences(40, seed=2)  # 10 batches an epoch: the run crosses an epoch boundary
    config = RecoveryConfig(**KILLED_SETTINGS)
    reference = recover(make_tiny_model("llama-gqa"), None, data, config, tmp_path / "straight", show_progress=False)

    output = tmp_path / "killed"
    process = start_python(
        "from conftest import arithmetic_sequences, make_tiny_model\n"
        "from optimum_hywia.recovery import RecoveryConfig, RecoveryTrainer, recover\n"
        "step = RecoveryTrainer.training_step\n"
        "RecoveryTrainer.training_step = lambda *args, **kwargs: (time.sleep(0.3), step(*args, **kwargs))[1]\n"
        f"config = RecoveryConfig(**{KILLED_SETTINGS!r})\n"
        "data = arithmetic_sequences(40, seed=2)\n"
        f"recover(make_tiny_model('llama-gqa'), None, data, config, {str(output)!r}, show_progress=False)\n"
    )
    kill_when(process, lambda: any(output.glob("checkpoint-*/trainer_state.json")))
    step = checkpoint_state(output)["global_step"]
    assert 3 <= step < 12
    partial = output / "checkpoint-9"  # what a kill during a checkpoint save leaves: no (complete) trainer state
    partial.mkdir(exist_ok=True)
    (partial / "adapter_model.safetensors").write_bytes(b"partial")
    (partial / "trainer_state.json").write_text('{"global_st')

    resumed = recover(make_tiny_model("llama-gqa"), None, data, config, output, show_progress=False)
    assert resumed.hywia_recovery_log.resumed_from_step == step
    assert resumed.hywia_recovery_log.losses == pytest.approx(reference.hywia_recovery_log.losses, abs=1e-5)
    for (key, value), expected in zip(resumed.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(value, expected, atol=1e-5), key
    assert [p.name for p in output.glob("checkpoint-*")] == ["checkpoint-12"]


def test_a_kill_during_the_final_save_leaves_no_staging_folder_after_the_next_run(tmp_path):
    from transformers import AutoModelForCausalLM

    pruned = pruned_tiny("llama-gqa", "uniform").save_pretrained(tmp_path / "pruned")
    state, output, marker = tmp_path / "state", tmp_path / "recovered", tmp_path / "saving"
    code = (
        "from conftest import arithmetic_sequences\n"
        "from optimum_hywia import load_pruned_model\n"
        "from optimum_hywia.recovery import RecoveryConfig, recover, save_recovered_model\n"
        f"config = RecoveryConfig(**{KILLED_SETTINGS!r})\n"
        f"model = load_pruned_model({str(pruned)!r})\n"
        f"model = recover(model, None, arithmetic_sequences(40, seed=2), config, {str(state)!r}, show_progress=False)\n"
        "save = type(model).save_pretrained\n"
        "def stalled(self, folder, *args, **kwargs):\n"
        "    save(self, folder, *args, **kwargs)\n"
        f"    open({str(marker)!r}, 'w').write(str(folder))\n"
        "    time.sleep(600)\n"
        "type(model).save_pretrained = stalled\n"
        f"save_recovered_model(model, None, {str(pruned)!r}, {str(output)!r})\n"
    )
    process = start_python(code)
    kill_when(process, marker.is_file)
    staging = Path(marker.read_text())
    assert staging.is_dir() and staging.name.startswith(".recovered.tmp-") and not output.exists()

    model = recover(
        load_pruned_model(pruned),
        None,
        arithmetic_sequences(40, seed=2),
        RecoveryConfig(**KILLED_SETTINGS),
        state,
        show_progress=False,
    )
    assert model.hywia_recovery_log.resumed_from_step == 12  # the finished training is reused
    save_recovered_model(model, None, pruned, output)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert sorted(p.name for p in state.iterdir()) == ["checkpoint-12", RECOVERY_LOG_NAME]
    reloaded = AutoModelForCausalLM.from_pretrained(output)
    data = arithmetic_sequences(4, seed=9)
    with torch.no_grad():
        assert torch.allclose(reloaded(data).logits, model(data).logits, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------ CLI


def test_cli_distills_from_the_source_model_the_report_records(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from optimum_hywia.commands.main import main

    base = tmp_path / "base"
    make_tiny_model("llama-gqa").save_pretrained(base)
    pruner = HyWIAPruner(AutoModelForCausalLM.from_pretrained(base), HyWIAConfig(pruning_ratio=0.3, importance="l2"))
    pruner.prune(show_progress=False)
    pruned = pruner.save_pretrained(tmp_path / "pruned")
    report = json.loads((pruned / "hywia_report.json").read_text())
    assert report["source_model"] == os.path.abspath(base)
    rows = arithmetic_sequences(16, seed=1).tolist()
    (tmp_path / "ids.jsonl").write_text("".join(json.dumps({"input_ids": row}) + "\n" for row in rows))
    common = ["--data", str(tmp_path / "ids.jsonl"), "--steps", "2", "--sequence-length", "16", "--quiet"]

    assert main(["recover", str(pruned), "-o", str(tmp_path / "kd"), "--objective", "distillation", *common]) == 0
    assert f"distilled from {base}" in capsys.readouterr().out
    log = json.loads((tmp_path / "kd" / RECOVERY_LOG_NAME).read_text())
    assert log["teacher"] == str(base) and log["config"]["objective"] == "distillation"
    assert f"distilled from `{base}` (KL, temperature 1)" in (tmp_path / "kd" / "README.md").read_text()

    del report["source_model"]  # a checkpoint of an older version: the teacher must be named
    (pruned / "hywia_report.json").write_text(json.dumps(report))
    assert main(["recover", str(pruned), "-o", str(tmp_path / "none"), "--objective", "distillation", *common]) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith("records no source model: pass --teacher (the dense model's Hub id or folder).")
    )
    assert main(["recover", str(pruned), "-o", str(tmp_path / "named"), "--teacher", str(base), *common]) == 0
    assert json.loads((tmp_path / "named" / RECOVERY_LOG_NAME).read_text())["config"]["objective"] == "distillation"
