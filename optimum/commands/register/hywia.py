"""Registers `optimum-cli hywia` (optimum-hywia). optimum-cli imports every module of this namespace at start-up.

`optimum` and `optimum.commands.register` are namespace packages (PEP 420): no `__init__.py` may be added here.
"""

from optimum_hywia.commands.optimum_cli import HyWIACommand

REGISTER_COMMANDS = [HyWIACommand]
