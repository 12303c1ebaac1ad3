"""Model cards of saved checkpoints: Hub metadata, size and width tables, config, evaluation, recovery, upload."""

from __future__ import annotations

import json
import os
import socket

import pytest
from conftest import make_tiny_model
from huggingface_hub import ModelCard
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.model_card import (
    EVALUATION_NAME,
    ModelSource,
    describe_source,
    push_checkpoint_to_hub,
    write_model_card,
)
from optimum_hywia.pruner import REPORT_NAME


def saved_checkpoint(tmp_path, layout="uniform", name="llama-gqa", folder="tiny-hywia"):
    pruner = HyWIAPruner(make_tiny_model(name), HyWIAConfig(pruning_ratio=0.3, layout=layout, importance="l2"))
    pruner.prune(show_progress=False)
    return pruner, pruner.save_pretrained(tmp_path / folder)


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2"])
@pytest.mark.parametrize("layout", ["uniform", "per_layer"])
def test_saved_checkpoint_has_a_card_with_metadata_tables_and_config(tmp_path, layout, name):
    pruner, folder = saved_checkpoint(tmp_path, layout, name)
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert {"pruned", "hywia", "optimum", pruner.model.config.model_type} <= set(data["tags"])
    assert "base_model" not in data and "license" not in data  # an in-process model has neither

    report = pruner.report
    text = card.text
    assert text.lstrip().startswith("# tiny-hywia\n")
    assert f"| All parameters | {report.params_before:,} | {report.params_after:,} |" in text
    for layer in report.layers:
        after = layer["after"]["intermediate_size"]
        assert f"| {layer['layer']} | " in text and f"96 → {after}" in text
    config_block = text.split("```json\n")[1].split("\n```")[0]
    assert json.loads(config_block) == json.loads((folder / "hywia_config.json").read_text())
    assert ("trust_remote_code=True" in text) == (layout == "per_layer")
    assert ("load_pruned_model" in text) and "## Evaluation" not in text and "## LoRA recovery" not in text


@pytest.mark.parametrize(
    ("importance", "reconstruction", "says"),
    [
        ("l2", "none", ()),
        ("l2", "bias", ("into the biases",)),
        ("l2", "least_squares", ("refit by least squares",)),
        ("element1", "least_squares", ("structured OBS re-chose", "refit by least squares")),
    ],
)
def test_the_card_says_how_the_pruned_model_was_compensated(tmp_path, importance, reconstruction, says, token_batch):
    config = HyWIAConfig(pruning_ratio=0.3, importance=importance, reconstruction=reconstruction)
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), config)
    pruner.prune(token_batch, show_progress=False)
    text = ModelCard.load(pruner.save_pretrained(tmp_path / "pruned") / "README.md").text
    for phrase in ("into the biases", "structured OBS re-chose", "refit by least squares"):
        assert (phrase in text) == (phrase in says), phrase


def test_license_and_base_model_are_carried_over(tmp_path, monkeypatch):
    # a local base model folder whose README declares a licence
    base = tmp_path / "base"
    make_tiny_model("llama-gqa").save_pretrained(base)
    (base / "README.md").write_text("---\nlicense: mit\n---\n# base\n")
    assert describe_source(base) == ModelSource(None, "mit", "base")

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), unk_token="<unk>"
    )
    pruner = HyWIAPruner.from_pretrained(base, HyWIAConfig(pruning_ratio=0.3, importance="l2"), tokenizer=tokenizer)
    pruner.prune(show_progress=False)
    data = ModelCard.load(pruner.save_pretrained(tmp_path / "pruned") / "README.md").data
    assert data.license == "mit" and data.base_model is None

    # a Hub id: the licence comes from the Hub cache's README, never the network
    cached = tmp_path / "cached-README.md"
    cached.write_text("---\nlicense: llama2\n---\n")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: str(cached))
    hub_id = "meta-llama/Llama-2-7b-hf"
    assert describe_source(hub_id) == ModelSource(hub_id, "llama2", hub_id)
    pruner.source = describe_source("meta-llama/Llama-2-7b-hf")
    data = ModelCard.load(pruner.save_pretrained(tmp_path / "pruned", overwrite=True) / "README.md").data
    assert data.base_model == "meta-llama/Llama-2-7b-hf" and data.license == "llama2"


def test_gguf_licence_is_read_from_its_header():
    from optimum_hywia.data import smollm2_gguf

    folder, gguf_file = smollm2_gguf()
    source = describe_source(folder, gguf_file)
    assert source.license == "apache-2.0" and source.name == gguf_file and source.base_model is None


def test_evaluation_and_recovery_appear_after_a_refresh_and_metadata_is_kept(tmp_path):
    pruner, folder = saved_checkpoint(tmp_path, "per_layer")
    write_model_card(folder, ModelSource("HuggingFaceTB/SmolLM2-135M", "apache-2.0"))
    evaluation = {
        "perplexity": {"wikipedia": {"perplexity": 23.456, "sequence_length": 512, "windows": 20}},
        "zero_shot": {"piqa": {"acc": 0.61, "acc_norm": 0.6, "n": 100}, "average": {"acc": 0.61, "acc_norm": 0.6}},
        "zero_shot_limit": 100,
        "command": "optimum-cli hywia evaluate tiny-hywia",
    }
    (folder / EVALUATION_NAME).write_text(json.dumps(evaluation))
    recovery = {
        "config": {"rank": 8, "alpha": 16, "learning_rate": 1e-4, "batch_size": 4, "sequence_length": 256},
        "steps": 100,
        "data_format": "text",
        "target_modules": ["q_proj", "v_proj"],
        "initial_loss": 3.5,
        "final_loss": 2.25,
    }
    (folder / "recovery_log.json").write_text(json.dumps(recovery))
    write_model_card(folder)  # refresh: source taken from the existing card

    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M" and card.data.license == "apache-2.0"
    assert "lora-recovered" in card.data.tags
    assert "| wikipedia | 23.46 | 512 | 20 |" in card.text
    assert "| piqa | 61.0 | 60.0 | 100 |" in card.text and "first 100 validation items" in card.text
    assert "rank 8, alpha 16" in card.text and "3.500 → 2.250" in card.text
    assert "[`HuggingFaceTB/SmolLM2-135M`](https://huggingface.co/HuggingFaceTB/SmolLM2-135M)" in card.text

    # full fine-tuning: its own section, with the learning-rate schedule
    recovery["config"].update(method="full", lr_scheduler="cosine", warmup_steps=20)
    (folder / "recovery_log.json").write_text(json.dumps(recovery))
    card = ModelCard.load(write_model_card(folder))
    assert "## Recovery fine-tuning" in card.text and "## LoRA recovery" not in card.text
    assert "learning rate 0.0001 (cosine, 20 warm-up steps), 100 steps" in card.text
    assert "lora-recovered" not in card.data.tags


def test_card_of_a_folder_that_is_no_checkpoint_gets_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="hywia_report.json is missing"):
        write_model_card(tmp_path)


class RecordingApi:
    calls: dict = {}

    def __init__(self, token=None):
        RecordingApi.calls = {"token": token}

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.calls["repo"] = (repo_id, private, exist_ok)

    def upload_folder(self, repo_id, folder_path, commit_message, ignore_patterns=None):
        self.calls["files"] = sorted(p.name for p in folder_path.iterdir())
        self.calls["readme"] = (folder_path / "README.md").read_text()
        self.calls["message"] = commit_message
        return f"https://hub.example/{repo_id}/commit/1"


def test_push_checkpoint_uploads_the_folder_with_a_card_naming_the_repo(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    _, folder = saved_checkpoint(tmp_path, "per_layer")
    url = push_checkpoint_to_hub(folder, "me/tiny-hywia", private=True, token="hf_secret")
    calls = RecordingApi.calls
    assert url == "https://hub.example/me/tiny-hywia/commit/1"
    assert calls["repo"] == ("me/tiny-hywia", True, True) and calls["token"] == "hf_secret"
    assert {"README.md", "config.json", "model.safetensors", "modeling_hywia.py", REPORT_NAME} <= set(calls["files"])
    assert 'from_pretrained("me/tiny-hywia", trust_remote_code=True)' in calls["readme"]
    assert calls["message"].startswith("Upload HyWIA-pruned model (")

    with pytest.raises(ValueError, match="not a Hub repo id"):
        push_checkpoint_to_hub(folder, "no-slash")
    with pytest.raises(FileNotFoundError, match="not a HyWIA checkpoint"):
        push_checkpoint_to_hub(tmp_path, "me/x")


def _hub_and_token() -> str | None:
    """Why the real upload test cannot run, or None when it can."""
    from huggingface_hub import constants, get_token

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "HF_HUB_OFFLINE=1"
    if not get_token():
        return "no Hub token (set HF_TOKEN or run `hf auth login`) to create a test repo"
    try:
        socket.create_connection((constants.ENDPOINT.split("//")[-1].split("/")[0], 443), timeout=3).close()
    except OSError as error:
        return f"the Hub ({constants.ENDPOINT}) is not reachable: {error}"
    return None


@pytest.mark.slow
def test_real_upload_to_the_hub(tmp_path):
    reason = _hub_and_token()
    if reason:
        pytest.skip(f"real Hub upload not tested: {reason}")
    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = f"{api.whoami()['name']}/optimum-hywia-test-{os.getpid()}"
    _, folder = saved_checkpoint(tmp_path)
    try:
        push_checkpoint_to_hub(folder, repo_id, private=True)
        files = set(api.list_repo_files(repo_id))
        assert {"README.md", "config.json", "model.safetensors", REPORT_NAME} <= files
    finally:
        api.delete_repo(repo_id, missing_ok=True)


@pytest.mark.parametrize(
    "architectures, auto_class, task",
    [
        (["LlamaForCausalLM"], "AutoModelForCausalLM", "text-generation"),
        (["HyWIAGPT2LMHeadModel"], "AutoModelForCausalLM", "text-generation"),
        (["BertModel"], "AutoModel", "feature-extraction"),
        (["BertForMaskedLM"], "AutoModelForMaskedLM", "fill-mask"),
        (["Gemma3ForConditionalGeneration"], "AutoModelForImageTextToText", "image-text-to-text"),
        (None, "AutoModelForCausalLM", "text-generation"),
    ],
)
def test_loading_class_and_pipeline_tag_follow_the_architecture(architectures, auto_class, task):
    from optimum_hywia.model_card import _task

    assert _task({"architectures": architectures}) == (auto_class, task)
