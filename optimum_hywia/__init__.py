"""optimum-hywia: structured pruning of LLMs with Hybrid-grained Weight Importance Assessment."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_getattr

__version__ = "0.1.0"

# public name -> defining submodule. Imported on first use, so that `import optimum_hywia` (and with it
# `optimum-cli --help`, which loads this package's command registration) does not pay for torch and transformers.
_EXPORTS = {
    "HyWIAConfig": "configuration",
    "HyWIAPruner": "pruner",
    "PruningReport": "report",
    "load_pruned_model": "modeling",
    "RecoveryConfig": "recovery",
    "recover": "recovery",
}

if TYPE_CHECKING:
    from .configuration import HyWIAConfig
    from .modeling import load_pruned_model
    from .pruner import HyWIAPruner
    from .recovery import RecoveryConfig, recover
    from .report import PruningReport


__getattr__ = lazy_getattr(__name__, _EXPORTS)


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
