"""Loading HyWIA checkpoints without remote code."""

from __future__ import annotations

import os
from typing import Any

import transformers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .modeling_hywia import AUTO_MAP_MODULE, CLASS_PREFIX, pruned_class, resize_linear_layers

MODELING_FILE = os.path.join(os.path.dirname(__file__), f"{AUTO_MAP_MODULE}.py")


def load_pruned_model(name_or_path: str | os.PathLike, **kwargs: Any) -> PreTrainedModel:
    """Load any HyWIA checkpoint (uniform or per-layer) with this package's copy of the modeling override.

    Unlike `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)`, no code is read from the checkpoint.
    Keyword arguments go to `from_pretrained`.
    """
    kwargs.pop("trust_remote_code", None)
    config = AutoConfig.from_pretrained(name_or_path, **{k: v for k, v in kwargs.items() if k in _CONFIG_KWARGS})
    if not getattr(config, "hywia_linear_shapes", None):
        return AutoModelForCausalLM.from_pretrained(name_or_path, config=config, **kwargs)
    architectures = getattr(config, "architectures", None) or []
    base = getattr(transformers, architectures[0].removeprefix(CLASS_PREFIX), None) if architectures else None
    if not (isinstance(base, type) and issubclass(base, PreTrainedModel)):
        raise ValueError(
            f"{name_or_path}: config.architectures={architectures} names no transformers model class; "
            "load it with trust_remote_code=True."
        )
    return pruned_class(base).from_pretrained(name_or_path, config=config, **kwargs)


_CONFIG_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder")

__all__ = [
    "AUTO_MAP_MODULE",
    "CLASS_PREFIX",
    "MODELING_FILE",
    "load_pruned_model",
    "pruned_class",
    "resize_linear_layers",
]
