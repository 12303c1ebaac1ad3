"""Loading HyWIA checkpoints without remote code."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import transformers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .modeling_hywia import AUTO_MAP_MODULE, CLASS_PREFIX, pruned_class, resize_linear_layers

MODELING_FILE = os.path.join(os.path.dirname(__file__), f"{AUTO_MAP_MODULE}.py")


def load_pruned_model(name_or_path: str | os.PathLike, **kwargs: Any) -> PreTrainedModel:
    """Load any HyWIA checkpoint (uniform or per-layer) with this package's copy of the modeling override.

    Unlike `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)`, no code is read from the checkpoint.
    A vanilla checkpoint loads with its family's Auto class (`AutoModel` for encoders). Keyword arguments go to
    `from_pretrained`.
    """
    kwargs.pop("trust_remote_code", None)
    config = AutoConfig.from_pretrained(name_or_path, **{k: v for k, v in kwargs.items() if k in _CONFIG_KWARGS})
    kwargs.setdefault("use_safetensors", True)  # HyWIA checkpoints are safetensors only; never unpickle weights
    if not getattr(config, "hywia_linear_shapes", None):  # a vanilla checkpoint: the Auto class of its family
        from ..architectures import ARCHITECTURES

        spec = ARCHITECTURES.get(getattr(config, "model_type", None))
        auto_class = getattr(transformers, spec.auto_class) if spec is not None else AutoModelForCausalLM
        return auto_class.from_pretrained(name_or_path, config=config, **kwargs)
    check_declared_shapes(name_or_path, config, kwargs.get("subfolder", ""))
    architectures = getattr(config, "architectures", None) or []
    base = getattr(transformers, architectures[0].removeprefix(CLASS_PREFIX), None) if architectures else None
    if not (isinstance(base, type) and issubclass(base, PreTrainedModel)):
        raise ValueError(
            f"{name_or_path}: config.architectures={architectures} names no transformers model class; "
            "load it with trust_remote_code=True."
        )
    return pruned_class(base).from_pretrained(name_or_path, config=config, **kwargs)


_CONFIG_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder")
_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


def check_declared_shapes(name_or_path: str | os.PathLike, config: Any, subfolder: str = "") -> None:
    """Check `config.hywia_linear_shapes` before any weight is loaded.

    Its keys must be module paths (`model.layers.0.mlp.gate_proj`: they are looked up with `get_submodule`, never
    used as file paths) and its values `[out_features, in_features]`. For a local folder, the safetensors headers
    must hold a weight of exactly that shape (or its transpose: `Conv1D` stores `[in, out]`) for every entry
    (sharded checkpoints: every shard named by the index must be a file inside the folder). Raises a `ValueError`
    saying what is inconsistent.
    """
    shapes = getattr(config, "hywia_linear_shapes", None)
    where = f"{name_or_path}: config.hywia_linear_shapes"
    if not isinstance(shapes, dict):
        raise ValueError(f"{where} must map module paths to [out_features, in_features], got {type(shapes).__name__}.")
    for path, shape in shapes.items():
        if not (isinstance(path, str) and _MODULE_PATH.fullmatch(path)):
            raise ValueError(
                f"{where} key {path!r} is not a module path like 'model.layers.0.mlp.gate_proj': config.json is "
                "corrupt or was edited; re-save the checkpoint with HyWIAPruner.save_pretrained."
            )
        if not (
            isinstance(shape, (list, tuple))
            and len(shape) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
        ):
            raise ValueError(
                f"{where}[{path!r}] must be [out_features, in_features] (positive integers), got {shape!r}."
            )
    folder = os.path.join(name_or_path, subfolder) if subfolder else os.fspath(name_or_path)
    if not os.path.isdir(folder):
        return  # a Hub id: transformers checks the shapes while loading
    stored = _safetensors_shapes(folder, [f"{path}.weight" for path in shapes])
    for path, shape in shapes.items():
        actual = stored.get(f"{path}.weight")
        if actual is None:
            raise ValueError(
                f"{where} declares {path} but the checkpoint holds no tensor {path}.weight: the checkpoint is "
                "incomplete or inconsistent; re-save it with HyWIAPruner.save_pretrained."
            )
        if list(actual) not in (list(shape), list(shape)[::-1]):  # [in, out]: a transposed Conv1D weight (GPT-2)
            raise ValueError(
                f"{where} declares {path} as {list(shape)} but the checkpoint's {path}.weight is {list(actual)}: the "
                "checkpoint is inconsistent; re-save it with HyWIAPruner.save_pretrained."
            )


def _safetensors_shapes(folder: str, names: list[str]) -> dict[str, list[int]]:
    """Shapes of the tensors `names` read from the safetensors headers of `folder` (no weights are loaded)."""
    from safetensors import safe_open

    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(single):
        files = {name: "model.safetensors" for name in names}
    elif os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            weight_map = json.load(handle).get("weight_map", {})
        files = {name: weight_map[name] for name in names if name in weight_map}
        for shard in set(files.values()):
            if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
                raise ValueError(
                    f"{index} names the shard {shard!r}, which is not a file inside the checkpoint folder: refusing "
                    "to read it; re-save the checkpoint with HyWIAPruner.save_pretrained."
                )
    else:
        raise ValueError(
            f"{folder} holds no model.safetensors (or its index): HyWIA checkpoints are safetensors only; re-save "
            "it with HyWIAPruner.save_pretrained."
        )
    shapes: dict[str, list[int]] = {}
    for shard in sorted(set(files.values())):
        with safe_open(os.path.join(folder, shard), framework="pt") as handle:
            available = set(handle.keys())
            for name, file in files.items():
                if file == shard and name in available:
                    shapes[name] = list(handle.get_slice(name).get_shape())
    return shapes


__all__ = [
    "AUTO_MAP_MODULE",
    "CLASS_PREFIX",
    "MODELING_FILE",
    "check_declared_shapes",
    "load_pruned_model",
    "pruned_class",
    "resize_linear_layers",
]
