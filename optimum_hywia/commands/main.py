"""The standalone `hywia` console script: the same commands as `optimum-cli hywia`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .arguments import COMMANDS

DESCRIPTION = """\
HyWIA structured pruning of LLMs (optimum-hywia). The same commands run as `optimum-cli hywia <command>`.

  hywia prune MODEL -o OUTPUT      prune a model and save it (safetensors + config + model card)
  hywia evaluate MODEL             perplexity and zero-shot accuracy
  hywia recover PRUNED -o OUTPUT   LoRA or distillation recovery, merged back into the weights

Run `hywia <command> --help` for its options and examples."""


def build_parser(prog: str = "hywia") -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"optimum-hywia {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(c.name for c in COMMANDS) + "}")
    for command in COMMANDS:
        command.add_arguments(subparsers.add_parser(command.name, help=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: `sys.argv[1:]`), run the command, and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from .runners import run_command

    return run_command(args.command, args)


if __name__ == "__main__":
    sys.exit(main())
