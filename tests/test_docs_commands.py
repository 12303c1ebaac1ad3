"""Every `hywia ...` / `optimum-cli hywia ...` command shown in README.md, docs/*.md and the commands' --help
examples parses with the real argparse parser, and the documented `prune --evaluate` runs end to end on a tiny model.

Only the prune commands (`hywia prune MODEL ... [--evaluate]` without an upload) and `hywia evaluate MODEL` without
`--tasks` run end to end here, in-process through `optimum_hywia.commands.main.main`, with the model id mapped to a
tiny local model and small calibration limits. The others are argument-parsed only: `--push-to-hub` needs the Hub,
`--tasks` needs lm-evaluation-harness and its task data, `recover` trains (tests/test_commands.py runs it), and
`alpaca.jsonl`-style data files are the reader's own. README's `examples/prune_smollm2.py` and `bash scripts/...`
lines are not CLI commands and are out of scope.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import make_tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from optimum_hywia.commands.arguments import COMMANDS
from optimum_hywia.commands.main import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\s*\n(.*?)^```", re.M | re.S)
SMALL = ["--samples", "4", "--sequence-length", "16", "--fusion-steps", "1", "--quiet"]  # appended when running


def _logical_lines(text: str) -> list[str]:
    """Lines with `\\` continuations joined."""
    return text.replace("\\\n", " ").splitlines()


def _cli_argv(line: str) -> list[str] | None:
    """The `hywia` arguments of a `hywia ...` or `optimum-cli hywia ...` line (comments dropped), else None."""
    words = shlex.split(line.strip().removeprefix("$ "), comments=True)
    if words[:1] == ["hywia"]:
        return words[1:]
    if words[:2] == ["optimum-cli", "hywia"]:
        return words[2:]
    return None


def documented_commands() -> list[tuple[str, list[str]]]:
    """`(where, argv)` of every CLI command in the shell blocks of README.md and docs/*.md, and in the --help
    examples of each command (`%(prog)s ...` lines)."""
    found = []
    for path in DOCUMENTS:
        for block in SHELL_BLOCK.findall(path.read_text(encoding="utf-8")):
            for line in _logical_lines(block):
                argv = _cli_argv(line) if line.strip() else None
                if argv is not None:
                    found.append((f"{path.relative_to(ROOT)}: hywia {' '.join(argv)}", argv))
    for command in COMMANDS:
        for line in _logical_lines(_epilog(command.name)):
            if line.strip().startswith("%(prog)s"):
                argv = [command.name, *shlex.split(line.strip().removeprefix("%(prog)s"), comments=True)]
                found.append((f"hywia {command.name} --help: hywia {' '.join(argv)}", argv))
    return found


def _epilog(name: str) -> str:
    """The --help examples of one command (set by its `add_arguments`)."""
    parser = argparse.ArgumentParser()
    next(command for command in COMMANDS if command.name == name).add_arguments(parser)
    return parser.epilog


COMMANDS_FOUND = documented_commands()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny Llama with a word-level tokenizer, saved as the folder every documented model id maps to."""
    folder = tmp_path_factory.mktemp("docs") / "tiny"
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{f"w{i}": i + 4 for i in range(124)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>")
    make_tiny_model("llama-gqa").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _localise(argv: list[str], model: Path, workdir: Path) -> list[str]:
    """The documented `argv` with its MODEL mapped to `model`, `...` (an elided `MODEL -o OUTPUT`) filled in, and
    output/data paths moved into `workdir`."""
    argv = list(argv)
    if len(argv) > 1 and argv[1] == "...":
        argv[1:2] = [str(model), "-o", "out"]
    elif len(argv) > 1 and not argv[1].startswith("-"):
        argv[1] = str(model)
    for flag in ("-o", "--output", "--json", "--state-dir"):
        if flag in argv:
            index = argv.index(flag) + 1
            argv[index] = str(workdir / Path(argv[index]).name)
    for flag in ("--calibration-data", "--data", "--config", "--text"):
        if flag in argv and Path(argv[argv.index(flag) + 1]).suffix:  # a file, not 'lambada' or a Hub dataset
            index = argv.index(flag) + 1
            argv[index] = str(workdir / Path(argv[index]).name)
    return argv


def test_the_docs_show_commands_of_every_kind():
    shown = [argv[0] for _, argv in COMMANDS_FOUND]
    assert {"prune", "evaluate", "recover"} <= set(shown)
    readme = [where for where, _ in COMMANDS_FOUND if where.startswith("README.md")]
    assert any("--layout per_layer --evaluate" in where for where in readme)
    assert any(where.startswith("hywia prune --help") for where, _ in COMMANDS_FOUND)


@pytest.mark.parametrize("where, argv", COMMANDS_FOUND, ids=[where for where, _ in COMMANDS_FOUND])
def test_documented_command_parses(where, argv, tiny_model, tmp_path):
    parser = build_parser()
    try:
        args = parser.parse_args(_localise(argv, tiny_model, tmp_path))
    except SystemExit as error:  # argparse reports bad arguments on stderr and exits with 2
        pytest.fail(f"{where!r} does not parse (exit {error.code})")
    assert args.command == argv[0] and args.model == str(tiny_model)


RUNNABLE = [
    (where, argv)
    for where, argv in COMMANDS_FOUND
    if argv[0] == "prune" and "--push-to-hub" not in argv and "..." not in argv and "--evaluate" in argv
]


@pytest.mark.parametrize("where, argv", RUNNABLE, ids=[where for where, _ in RUNNABLE])
def test_documented_prune_with_evaluate_runs_end_to_end(where, argv, tiny_model, tmp_path, capsys):
    lines = (" ".join(f"w{(i * 7 + j) % 124}" for j in range(50)) for i in range(40))
    (tmp_path / "calib.txt").write_text("\n".join(lines))  # the `calib.txt` of docs/cli.md
    localised = _localise(argv, tiny_model, tmp_path)
    code = main([*localised, *SMALL])
    out = capsys.readouterr()
    assert code == 0, f"{where}: {out.err.strip().splitlines()[-1:]}"
    folder = Path(localised[localised.index("-o") + 1])
    results = json.loads((folder / "hywia_evaluation.json").read_text())
    assert "perplexity  Wikipedia" in out.out and results["perplexity"]
    assert "## Evaluation" in (folder / "README.md").read_text()

    # the documented plain `hywia evaluate PRUNED` (--tasks needs lm-evaluation-harness data) runs on it too
    evaluate = next(argv for _, argv in COMMANDS_FOUND if argv[0] == "evaluate" and len(argv) == 2)
    assert main([*_localise(evaluate, folder, tmp_path), "--max-windows", "2", "--quiet"]) == 0
    assert "perplexity  Wikipedia" in capsys.readouterr().out
