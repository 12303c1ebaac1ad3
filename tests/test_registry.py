"""The importance registry: config validation, the CLI and the pruner read it, so a method defined outside the
package prunes through `HyWIAConfig(importance=...)` and `hywia prune --importance` with no edit to package code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model
from test_commands import WORDS
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.importance import (
    ImportanceMethod,
    get_importance,
    importance_markdown,
    importance_names,
    register_importance,
    registry,
)

# an outside method: keeps the groups with the lowest indices (no data needed)
TOY_SOURCE = """
import torch
from optimum_hywia.importance import ImportanceMethod


class KeepFirst(ImportanceMethod):
    description = "keeps the first groups of every layer (a test method)"

    def score(self, context):
        return {gs.key: -torch.arange(gs.num_groups, dtype=torch.float64) for gs in context.group_sets}
"""


def word_level_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def _kept_first(report) -> bool:
    return all(indices == list(range(len(indices))) for indices in report.kept_groups.values())


def test_a_method_registered_from_outside_prunes_through_the_config(clean_registry, tmp_path):
    namespace: dict = {}
    exec(TOY_SOURCE, namespace)
    register_importance("keep_first")(namespace["KeepFirst"])
    assert "keep_first" in importance_names() and "keep_first" in importance_markdown()
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), HyWIAConfig(pruning_ratio=0.3, importance="keep_first"))
    pruner.prune(show_progress=False)
    assert pruner.report.importance == "keep_first" and _kept_first(pruner.report)
    assert pruner.report.achieved_ratio > 0.2


def test_unknown_and_duplicate_names_get_one_line_errors(clean_registry):
    with pytest.raises(ValueError, match=r"importance must be one of \['hywia', .*'slimgpt'\], got 'nope'"):
        HyWIAConfig(importance="nope")
    with pytest.raises(ValueError, match="already registered; pass overwrite=True"):
        register_importance("l2")(type("Other", (ImportanceMethod,), {"score": lambda self, context: {}}))
    with pytest.raises(TypeError, match="needs an ImportanceMethod subclass"):
        register_importance("bad")(object)


def test_a_method_must_score_every_group(clean_registry):
    class Partial(ImportanceMethod):
        def score(self, context):
            return {context.group_sets[0].key: torch.zeros(context.group_sets[0].num_groups)}

    register_importance("partial")(Partial)
    with pytest.raises(ValueError, match="returned no score or a wrong number of scores"):
        HyWIAPruner(make_tiny_model("llama-gqa"), HyWIAConfig(importance="partial")).prune(show_progress=False)


def test_declared_needs_decide_whether_calibration_data_is_required():
    assert not get_importance("l2").needs_calibration and get_importance("element1").needs_gradients
    assert get_importance("wanda_sp").needs_activations and get_importance("hywia").uses_fusion
    with pytest.raises(ValueError, match=r"needs calibration_data.*only \['l2', 'random'\] prune without it"):
        HyWIAPruner(make_tiny_model("llama-gqa"), HyWIAConfig(importance="element1")).prune(show_progress=False)


def test_the_built_in_names_are_the_built_in_classes():
    from optimum_hywia.importance.methods import BUILT_IN_METHODS

    assert tuple(BUILT_IN_METHODS) == registry.BUILT_IN == importance_names()[: len(registry.BUILT_IN)]


def test_the_docs_table_is_generated_from_the_registry():
    docs = (Path(__file__).parents[1] / "docs" / "method.md").read_text()
    assert importance_markdown() in docs, "regenerate the table in docs/method.md with importance_markdown()"


def test_an_installed_plugin_prunes_through_the_cli(tmp_path):
    """A package declaring the entry point `optimum_hywia.importance` adds a choice to `hywia prune --importance`."""
    plugins = tmp_path / "site"
    plugins.mkdir()
    (plugins / "toy_importance.py").write_text(TOY_SOURCE)
    info = plugins / "toy_importance-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-importance\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[optimum_hywia.importance]\nkeep_first = toy_importance:KeepFirst\n")
    make_tiny_model("llama-gqa").save_pretrained(tmp_path / "base")
    word_level_tokenizer().save_pretrained(tmp_path / "base")
    env = dict(os.environ, PYTHONPATH=str(plugins), HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    hywia = str(Path(sys.executable).parent / "hywia")
    listing = subprocess.run([hywia, "prune", "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert "keep_first" in listing.stdout
    command = [hywia, "prune", str(tmp_path / "base"), "-o", str(tmp_path / "out"), "--importance", "keep_first"]
    result = subprocess.run([*command, "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "hywia_report.json").read_text())
    assert report["importance"] == "keep_first"
    assert all(indices == list(range(len(indices))) for indices in report["kept_groups"].values())
