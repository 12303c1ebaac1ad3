"""`optimum-cli hywia ...` and the `hywia` script, run as subprocesses like a user would."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, make_tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from optimum_hywia import load_pruned_model

BIN = Path(sys.executable).parent
WORDS = [f"w{i}" for i in range(VOCAB - 4)]


def cli(*args: str, tool: str = "hywia", timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    command = [str(BIN / tool), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A tiny Llama with a word-level tokenizer saved as a model folder, and text and instruction data files."""
    folder = tmp_path_factory.mktemp("cli")
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>", unk_token="<unk>"
    )
    make_tiny_model("llama-gqa").save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(100)]
    (folder / "text.txt").write_text("\n".join(lines))
    records = [{"prompt": f"{WORDS[i]} {WORDS[i + 1]}", "completion": WORDS[i + 2]} for i in range(40)]
    (folder / "instructions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_optimum_cli_discovers_the_commands_without_importing_torch():
    listing = cli("--help", tool="optimum-cli")
    assert listing.returncode == 0 and "hywia" in listing.stdout
    for command, example in [("prune", "--layout per_layer"), ("evaluate", "--tasks"), ("recover", "--rank 16")]:
        result = cli("hywia", command, "--help", tool="optimum-cli")
        assert result.returncode == 0 and "examples:" in result.stdout and example in result.stdout
        assert f"optimum-cli hywia {command}" in result.stdout
    script = cli("prune", "--help")
    assert script.returncode == 0 and "hywia prune" in script.stdout and "exit codes" in script.stdout
    check = "import sys, optimum.commands.register.hywia as r; print(r.REGISTER_COMMANDS, 'torch' in sys.modules)"
    light = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert light.stdout.strip().endswith("False"), light.stdout + light.stderr
    import optimum  # the namespace package still imports, with optimum's own modules

    assert any("site-packages" in path for path in optimum.__path__)


def test_prune_with_a_weight_only_method_compensates_when_asked(workspace, tmp_path):
    result = cli(
        "prune", str(workspace / "base"), "-o", str(tmp_path / "l2"), "--ratio", "0.3", "--importance", "l2",
        "--reconstruction", "bias", "--calibration-data", str(workspace / "text.txt"), "--samples", "8",
        "--sequence-length", "32", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "l2" / "hywia_config.json").read_text())["reconstruction"] == "bias"
    assert json.loads((tmp_path / "l2" / "config.json").read_text())["mlp_bias"] is True
    result = cli("prune", str(workspace / "base"), "-o", str(tmp_path / "plain"), "--importance", "l2", "--quiet")
    assert result.returncode == 0, result.stderr  # no data needed: nothing to compensate with
    assert json.loads((tmp_path / "plain" / "hywia_config.json").read_text())["reconstruction"] == "none"


def test_prune_evaluate_recover_round_trip(workspace):
    pruned, recovered = workspace / "pruned", workspace / "recovered"
    result = cli(
        "prune", str(workspace / "base"), "-o", str(pruned), "--ratio", "0.3", "--layout", "per_layer",
        "--calibration-data", str(workspace / "text.txt"), "--samples", "8", "--sequence-length", "32",
        "--fusion-steps", "2", "--fusion-objective", "lm", "--fine-estimators", "element2",
        "--fusion-ranking", "vector",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "30.0% of decoder-layer parameters removed" in result.stdout
    saved = json.loads((pruned / "hywia_config.json").read_text())
    assert saved["fusion_objective"] == "lm" and saved["fine_estimators"] == ["element2"]
    assert saved["fusion_ranking"] == "vector"
    assert saved["reconstruction"] == "least_squares"  # the default with calibration data: compensate
    assert "HyWIA fusion training" in result.stderr and "HyWIA compensation" in result.stderr  # progress bars
    report = json.loads((pruned / "hywia_report.json").read_text())
    assert report["fusion_ranking"] == {"attention": "vector", "mlp": "vector"}
    assert report["layout"] == "per_layer" and (pruned / "README.md").is_file()

    result = cli(
        "evaluate", str(pruned), "--text", str(workspace / "text.txt"), "--sequence-length", "32",
        "--max-windows", "4", "--spread", "--json", str(workspace / "eval.json"), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    value = json.loads((workspace / "eval.json").read_text())["perplexity"]["text.txt"]["perplexity"]
    assert f"perplexity  text.txt: {value:.3f}" in result.stdout and 1 < value < 1000
    saved = json.loads((pruned / "hywia_evaluation.json").read_text())
    assert saved["perplexity"]["text.txt"]["perplexity"] == value
    assert saved["perplexity"]["text.txt"]["spread"] is True
    assert f"| text.txt | {value:.2f} | 32 | 4, spread |" in (pruned / "README.md").read_text()

    result = cli(
        "recover", str(pruned), "-o", str(recovered), "--data", str(workspace / "instructions.jsonl"),
        "--steps", "4", "--sequence-length", "16", "--learning-rate", "1e-3", "--save-steps", "2", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Recovered with LoRA (4 steps" in result.stdout
    log = json.loads((recovered / "recovery_log.json").read_text())
    assert log["data_format"] == "instruction" and log["steps"] == 4
    assert (Path(f"{recovered}.recovery") / "checkpoint-4" / "trainer_state.json").is_file()
    card = (recovered / "README.md").read_text()
    assert "## LoRA recovery" in card and "## Evaluation" not in card  # old results describe the unrecovered model
    before, after = load_pruned_model(pruned), load_pruned_model(recovered)
    assert {k: v.shape for k, v in before.state_dict().items()} == {k: v.shape for k, v in after.state_dict().items()}
    assert any(not before.state_dict()[k].equal(v) for k, v in after.state_dict().items())

    # running the same recovery again resumes the finished run instead of training again
    again = cli(
        "recover", str(pruned), "-o", str(recovered), "--overwrite", "--data", str(workspace / "instructions.jsonl"),
        "--steps", "4", "--sequence-length", "16", "--learning-rate", "1e-3", "--save-steps", "2",
    )  # fmt: skip
    assert again.returncode == 0 and "resuming from step 4 of 4" in again.stderr


def test_optimum_cli_prunes_a_uniform_baseline(workspace, tmp_path):
    result = cli(
        "hywia", "prune", str(workspace / "base"), "-o", str(tmp_path / "l2"), "--importance", "l2", "--quiet",
        tool="optimum-cli",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "l2" / "config.json").read_text())
    assert "hywia_linear_shapes" not in config and config["intermediate_size"] < 96


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["prune", "{base}", "-o", "{out}", "--ratio", "1.5"], 2, "--pruning-ratio/--ratio: must be in (0, 1)"),
        (["prune", "no-such/model", "-o", "{out}"], 1, "Hub is not reachable and 'no-such/model' is not a local"),
        (["prune", "{base}", "-o", "{base}"], 1, "exists and is not empty; pass --overwrite"),
        (["evaluate", "{base}", "--tasks", "piqa", "squad"], 1, "Unknown task(s) ['squad']; choose 'all' or among"),
        (["recover", "{base}", "-o", "{out}", "--data", "missing.jsonl"], 1, "Data file 'missing.jsonl' does not"),
        (["prune", "{base}", "-o", "{out}", "--device", "cuda:7"], 1, "use --device cpu"),
        (
            ["prune", "{base}", "-o", "{out}", "--fine-estimators", "element2", "--fusion-ranking", "element1"],
            1,
            "ranks by an estimate HyWIA does not compute: add it to fine_estimators",
        ),
        ([], 2, "Run `hywia <command> --help`"),
    ],
)
def test_errors_are_one_line_with_an_exit_code(workspace, tmp_path, args, code, message):
    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    args = [a.format(base=workspace / "base", out=tmp_path / "out") for a in args]
    result = cli(*args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if code == 1:
        assert result.stderr.strip().splitlines()[-1].startswith(f"hywia {args[0]}: error: ")


def test_push_to_hub_flag_uploads_with_the_token_from_the_environment(workspace, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from optimum_hywia.commands.main import main

    calls = {}

    class RecordingApi:
        def __init__(self, token=None):
            calls["token_argument"] = token  # None: huggingface_hub reads HF_TOKEN itself

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message, ignore_patterns=None):
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            return f"https://hub.example/{repo_id}/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_print_me")
    argv = ["prune", str(workspace / "base"), "-o", str(tmp_path / "up"), "--importance", "l2", "--quiet"]
    code = main([*argv, "--push-to-hub", "me/tiny-l2", "--private"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert calls["repo"] == ("me/tiny-l2", True, True) and calls["token_argument"] is None
    assert {"README.md", "model.safetensors", "hywia_report.json"} <= set(calls["files"])
    assert "Uploaded to me/tiny-l2: https://hub.example/me/tiny-l2/commit/abc" in out.out
    assert "hf_do_not_print_me" not in out.out + out.err
    assert 'from_pretrained("me/tiny-l2")' in (tmp_path / "up" / "README.md").read_text()


def test_ctrl_c_saves_a_checkpoint_and_exits_130_and_a_changed_run_is_refused(workspace, tmp_path):
    import signal
    import time

    pruned = tmp_path / "pruned"
    assert cli("prune", str(workspace / "base"), "-o", str(pruned), "--importance", "l2", "--quiet").returncode == 0
    args = [
        "recover", str(pruned), "-o", str(tmp_path / "out"), "--data", str(workspace / "text.txt"),
        "--steps", "100000", "--sequence-length", "16", "--batch-size", "2", "--save-steps", "1", "--quiet",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    # A shell starts background jobs with SIGINT ignored, and a child inherits that: restore the terminal default so
    # the test behaves the same whether pytest runs in the foreground or not.
    process = subprocess.Popen(
        [str(BIN / "hywia"), *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    states = tmp_path / "out.recovery"
    deadline = time.monotonic() + 300
    while (
        not any(states.glob("checkpoint-*/trainer_state.json"))
        and process.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()  # never leave a 100000-step training behind
    assert process.returncode == 130 and "hywia recover: interrupted" in stderr and "Traceback" not in stderr
    (state,) = states.glob("checkpoint-*/trainer_state.json")
    step = json.loads(state.read_text())["global_step"]
    assert step >= 1

    args[args.index("100000")] = str(step + 1)  # a shorter run is a different run: refused, with the reason
    refused = cli(*args)
    assert (
        refused.returncode == 1 and "holds a recovery checkpoint of a different run (changed: config)" in refused.stderr
    )


@pytest.mark.parametrize("flag", ["--pruning-ratio", "--ratio"])
def test_pruning_ratio_flag_mirrors_the_config_field_and_ratio_stays_an_alias(workspace, tmp_path, capsys, flag):
    from optimum_hywia.commands.main import build_parser, main
    from optimum_hywia.commands.runners import _hywia_config
    from optimum_hywia.configuration import HyWIAConfig

    args = build_parser().parse_args(["prune", "model", "-o", "out", flag, "0.35"])
    assert args.pruning_ratio == 0.35 and _hywia_config(args, HyWIAConfig).pruning_ratio == 0.35
    argv = ["prune", str(workspace / "base"), "-o", str(tmp_path / "out"), flag, "0.3", "--importance", "l2"]
    assert main([*argv, "--quiet"]) == 0
    assert "% of decoder-layer parameters removed" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "hywia_config.json").read_text())["pruning_ratio"] == 0.3


def test_selection_candidates_flag_sets_the_config_field_and_an_empty_list_turns_the_choice_off():
    from optimum_hywia.commands.main import build_parser
    from optimum_hywia.commands.runners import _hywia_config
    from optimum_hywia.configuration import HyWIAConfig

    def config(*flags):
        return _hywia_config(build_parser().parse_args(["prune", "model", "-o", "out", *flags]), HyWIAConfig)

    assert config().selection_candidates == ("element2", "vector")
    assert config("--selection-candidates", "element1", "element2").selection_candidates == ("element1", "element2")
    assert config("--selection-candidates").selection_candidates == ()


def test_pruning_steps_flag_sets_the_config_field_and_refuses_zero(capsys):
    from optimum_hywia.commands.main import build_parser
    from optimum_hywia.commands.runners import _hywia_config
    from optimum_hywia.configuration import HyWIAConfig

    def config(*flags):
        return _hywia_config(build_parser().parse_args(["prune", "model", "-o", "out", *flags]), HyWIAConfig)

    assert config().pruning_steps == 1
    assert config("--pruning-steps", "3").pruning_steps == 3
    with pytest.raises(SystemExit):
        config("--pruning-steps", "0")
    assert "--pruning-steps" in capsys.readouterr().err


def test_reconstruction_reselect_flag_switches_the_config_field_both_ways():
    from optimum_hywia.commands.main import build_parser
    from optimum_hywia.commands.runners import _hywia_config
    from optimum_hywia.configuration import HyWIAConfig

    def config(*flags):
        return _hywia_config(build_parser().parse_args(["prune", "model", "-o", "out", *flags]), HyWIAConfig)

    assert config().reconstruction_reselect == HyWIAConfig().reconstruction_reselect
    assert config("--reconstruction-reselect").reconstruction_reselect is True
    assert config("--no-reconstruction-reselect").reconstruction_reselect is False
    default = HyWIAConfig().reconstruction_reselect_damping
    assert config().reconstruction_reselect_damping == default
    assert config("--reconstruction-reselect-damping", "1").reconstruction_reselect_damping == 1.0
    assert config("--reconstruction-reselect-damping", "plain").reconstruction_reselect_damping is None
    with pytest.raises(SystemExit):
        config("--reconstruction-reselect-damping", "-1")


def test_a_checkpoint_without_tokenizer_gets_a_one_line_error_naming_the_fixes(workspace, tmp_path, capsys):
    from optimum_hywia.commands.main import main

    bare = tmp_path / "bare"
    make_tiny_model("llama-gqa").save_pretrained(bare)  # config + weights, no tokenizer files
    small = ["--samples", "4", "--sequence-length", "16", "--fusion-steps", "1", "--quiet"]
    for argv in (
        ["prune", str(bare), "-o", str(tmp_path / "out"), *small],
        ["prune", str(bare), "-o", str(tmp_path / "out"), "--importance", "l2", "--evaluate", "--quiet"],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == (
            f"hywia prune: error: {bare} holds no tokenizer files: pass --tokenizer with the model's tokenizer (a "
            "folder or Hub id), or token-id calibration data (--calibration-data: a .jsonl/.parquet file of "
            "input_ids records)."
        )
        assert "Couldn't instantiate" not in err and "Traceback" not in err
        assert not (tmp_path / "out").exists()
    assert main(["evaluate", str(bare), "--quiet"]) == 1
    assert capsys.readouterr().err.strip().endswith("pass --tokenizer with the model's tokenizer (a folder or Hub id).")

    # both fixes work: --tokenizer, or token ids as calibration data (the checkpoint is saved without a tokenizer)
    text = str(workspace / "text.txt")
    with_tokenizer = tmp_path / "with-tokenizer"
    argv = ["prune", str(bare), "-o", str(with_tokenizer), "--tokenizer", str(workspace / "base")]
    assert main([*argv, "--calibration-data", text, *small]) == 0, capsys.readouterr().err
    assert (with_tokenizer / "tokenizer.json").is_file()
    rows = torch.randint(3, VOCAB, (8, 16), generator=torch.Generator().manual_seed(0)).tolist()
    (tmp_path / "ids.jsonl").write_text("".join(json.dumps({"input_ids": row}) + "\n" for row in rows))
    argv = ["prune", str(bare), "-o", str(tmp_path / "ids"), "--calibration-data", str(tmp_path / "ids.jsonl")]
    assert main([*argv, *small]) == 0, capsys.readouterr().err
    assert (tmp_path / "ids" / "model.safetensors").is_file() and not (tmp_path / "ids" / "tokenizer.json").exists()


def test_prune_help_states_the_calibration_defaults_the_library_uses():
    """The CLI module imports no torch, so its help text spells the defaults out: they must stay the library's."""
    from optimum_hywia.commands.arguments import add_prune_arguments
    from optimum_hywia.data.calibration import DEFAULT_NUM_SAMPLES, DEFAULT_SEQUENCE_LENGTH

    parser = argparse.ArgumentParser()
    add_prune_arguments(parser)
    helps = {action.dest: action.help for action in parser._actions}
    assert f"(default: {DEFAULT_NUM_SAMPLES})" in helps["samples"]
    assert f"(default: {DEFAULT_SEQUENCE_LENGTH})" in helps["sequence_length"]
