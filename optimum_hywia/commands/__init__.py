"""Command line: `optimum-cli hywia prune|evaluate|recover` and the equivalent `hywia` script.

This package stays light to import (argparse only): optimum-cli imports its registration at every start.
"""

from .arguments import COMMANDS

__all__ = ["COMMANDS"]
