"""Every script in examples/ runs, on the real SmolLM2-135M-Instruct with small settings (offline)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, timeout: int = 1800) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    command = [sys.executable, str(EXAMPLES / name), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-4000:]}"
    return result.stdout


def test_every_example_is_tested():
    tested = {"prune_smollm2.py", "prune_and_recover.py", "evaluate.py", "push_to_hub.py"}
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


@pytest.fixture(scope="module")
def recovered(tmp_path_factory) -> Path:
    """examples/prune_and_recover.py with small settings: per-layer pruning by element2 (HyWIA's default pipeline on
    this model is tests/test_real_model.py's; here the script is under test), 4 steps of LoRA on the LM loss."""
    output = tmp_path_factory.mktemp("examples") / "smollm2-lora"
    stdout = run_example(
        "prune_and_recover.py", "--ratio", "0.2", "--importance", "element2", "--samples", "4", "--steps", "4",
        "--method", "lora", "--batch-size", "2", "--sequence-length", "64", "--eval-windows", "2",
        "--eval-length", "128", "--output", str(output),
    )  # fmt: skip
    assert "pruned + recovery" in stdout and "Recovery (lora, lm): 4 steps" in stdout
    return output


@pytest.mark.slow
def test_prune_and_recover_example(recovered):
    rows = json.loads((recovered / "example_results.json").read_text())
    assert list(rows) == ["dense", "pruned 20%", "pruned + recovery"]
    assert all(list(row) == ["wikipedia", "novels", "news"] for row in rows.values())
    assert all(math.isfinite(value) and value > 1 for row in rows.values() for value in row.values())
    assert rows["pruned 20%"]["wikipedia"] > rows["dense"]["wikipedia"]  # 20% removed costs perplexity
    assert json.loads((recovered / "recovery_log.json").read_text())["steps"] == 4
    assert (recovered / "modeling_hywia.py").is_file() and "## LoRA recovery" in (recovered / "README.md").read_text()


@pytest.mark.slow
def test_evaluate_example(recovered, tmp_path):
    stdout = run_example(
        "evaluate.py", str(recovered), "--tasks", "piqa", "--limit", "8", "--eval-windows", "2",
        "--json", str(tmp_path / "results.json"),
    )  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["zero_shot"]["piqa"]["n"] == 8 and 0 <= results["zero_shot"]["piqa"]["acc"] <= 1
    assert f"perplexity {results['perplexity']:.2f}" in stdout and "piqa" in stdout


@pytest.mark.slow
def test_push_to_hub_example_dry_run(recovered):
    stdout = run_example("push_to_hub.py", str(recovered), "me/smollm2-hywia-lora", "--private", "--dry-run")
    assert "Would upload to me/smollm2-hywia-lora (private)" in stdout and "model.safetensors" in stdout
    assert 'from_pretrained("me/smollm2-hywia-lora", trust_remote_code=True)' in (recovered / "README.md").read_text()


@pytest.mark.slow
def test_prune_smollm2_example(tmp_path):
    stdout = run_example(
        "prune_smollm2.py", "--ratio", "0.2", "--importance", "element2", "--samples", "4", "--sequence-length", "64",
        "--eval-windows", "2", "--speed-rounds", "1", "--output", str(tmp_path / "out"),
    )  # fmt: skip
    results = json.loads((tmp_path / "out" / "example_results.json").read_text())
    rows = {name: row for name, row in results.items() if name != "prune_seconds"}
    assert len(rows) == 2 and "pipeline('text-generation') on the saved checkpoint" in stdout
    assert all(set(row) >= {"ppl_wikipedia", "ppl_novels", "ppl_news", "prefill_tokens_per_s"} for row in rows.values())
    report = json.loads((tmp_path / "out" / "hywia_report.json").read_text())
    assert report["reconstruction_errors"]  # the shipped defaults compensate
    assert (tmp_path / "out" / "README.md").is_file()
