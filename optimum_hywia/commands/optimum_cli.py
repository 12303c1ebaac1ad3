"""`optimum-cli hywia prune|evaluate|recover`, registered through optimum's `optimum.commands.register` namespace.

Only argparse and optimum's light command base are imported here; each command imports its dependencies in `run`.
"""

from __future__ import annotations

import sys

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from .arguments import COMMANDS, Command


def _leaf_command(command: Command) -> type[BaseOptimumCLICommand]:
    """An optimum-cli command class for one of `COMMANDS`."""

    class HyWIASubcommand(BaseOptimumCLICommand):
        COMMAND = CommandInfo(name=command.name, help=command.help)

        @staticmethod
        def parse_args(parser) -> None:
            command.add_arguments(parser)

        def run(self) -> None:
            from .runners import run_command

            sys.exit(run_command(command.name, self.args))

    HyWIASubcommand.__name__ = HyWIASubcommand.__qualname__ = f"HyWIA{command.name.capitalize()}Command"
    return HyWIASubcommand


HyWIAPruneCommand, HyWIAEvaluateCommand, HyWIARecoverCommand = (_leaf_command(command) for command in COMMANDS)


class HyWIACommand(BaseOptimumCLICommand):
    """`optimum-cli hywia`: HyWIA structured pruning (prune, evaluate, recover)."""

    COMMAND = CommandInfo(name="hywia", help="HyWIA structured pruning: prune, evaluate, recover (optimum-hywia)")
    SUBCOMMANDS = (
        CommandInfo(name="prune", help=COMMANDS[0].help, subcommand_class=HyWIAPruneCommand),
        CommandInfo(name="evaluate", help=COMMANDS[1].help, subcommand_class=HyWIAEvaluateCommand),
        CommandInfo(name="recover", help=COMMANDS[2].help, subcommand_class=HyWIARecoverCommand),
    )

    def run(self) -> None:
        self.parser.print_help()
        sys.exit(2)
