"""optimum-hywia: structured pruning of LLMs with Hybrid-grained Weight Importance Assessment."""

__version__ = "0.1.0"

from .configuration import HyWIAConfig  # noqa: E402
from .modeling import load_pruned_model  # noqa: E402
from .pruner import HyWIAPruner, PruningReport  # noqa: E402

__all__ = ["HyWIAConfig", "HyWIAPruner", "PruningReport", "__version__", "load_pruned_model"]
