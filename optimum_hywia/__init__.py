"""optimum-hywia: structured pruning of LLMs with Hybrid-grained Weight Importance Assessment."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> defining submodule. Imported on first use, so that `import optimum_hywia` (and with it
# `optimum-cli --help`, which loads this package's command registration) does not pay for torch and transformers.
_EXPORTS = {
    "HyWIAConfig": "configuration",
    "HyWIAPruner": "pruner",
    "PruningReport": "pruner",
    "load_pruned_model": "modeling",
    "RecoveryConfig": "recovery",
    "recover": "recovery",
}

if TYPE_CHECKING:
    from .configuration import HyWIAConfig
    from .modeling import load_pruned_model
    from .pruner import HyWIAPruner, PruningReport
    from .recovery import RecoveryConfig, recover


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "HyWIAConfig",
    "HyWIAPruner",
    "PruningReport",
    "RecoveryConfig",
    "__version__",
    "load_pruned_model",
    "recover",
]
