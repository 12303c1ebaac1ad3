# Copyright 2026 The optimum-hywia authors. Apache-2.0.
"""Modeling override for HyWIA-pruned checkpoints whose widths a vanilla config cannot describe.

optimum-hywia copies this fixed file, unchanged, into such checkpoints; it is never generated from user input.
`config.auto_map` names a class `HyWIA<TransformersClass>` (e.g. `HyWIALlamaForCausalLM`): it is the transformers
class itself, whose linear layers listed in `config.hywia_linear_shapes` are re-created at their pruned shapes before
the weights are loaded. Everything else (attention, rotary, KV cache, generation) is the vanilla implementation.
"""

import transformers
from torch import nn

CLASS_PREFIX = "HyWIA"
AUTO_MAP_MODULE = "modeling_hywia"


def resize_linear_layers(model: nn.Module, shapes: dict) -> None:
    """Replace each `nn.Linear` named in `shapes` ({path: [out_features, in_features]}) by one of that shape."""
    prefix = getattr(model, "base_model_prefix", "")
    for path, (out_features, in_features) in shapes.items():
        try:
            old = model.get_submodule(path)
        except AttributeError:
            # the checkpoint was saved with its task head and is loaded without it (e.g. AutoModel)
            if not (prefix and path.startswith(prefix + ".")):
                raise
            path = path[len(prefix) + 1 :]
            old = model.get_submodule(path)
        if not isinstance(old, nn.Linear):
            raise TypeError(f"hywia_linear_shapes names {path}, a {type(old).__name__}, not an nn.Linear.")
        parent_path, _, name = path.rpartition(".")
        new = nn.Linear(
            int(in_features),
            int(out_features),
            bias=old.bias is not None,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
        setattr(model.get_submodule(parent_path) if parent_path else model, name, new)


class HyWIAPrunedMixin:
    """Re-creates the pruned linear layers right after the vanilla model is built."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        resize_linear_layers(self, getattr(config, "hywia_linear_shapes", None) or {})


def pruned_class(base: type) -> type:
    """The pruned-model class for a transformers model class."""
    name = CLASS_PREFIX + base.__name__
    cls = globals().get(name)
    if cls is None:
        cls = type(name, (HyWIAPrunedMixin, base), {"__module__": __name__})
        globals()[name] = cls
    return cls


def __getattr__(name: str):
    # `auto_map` entries look classes up by name: build `HyWIA<Class>` on first use from `transformers.<Class>`.
    if name.startswith(CLASS_PREFIX):
        base = getattr(transformers, name[len(CLASS_PREFIX) :], None)
        if isinstance(base, type) and issubclass(base, transformers.PreTrainedModel):
            return pruned_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AUTO_MAP_MODULE", "CLASS_PREFIX", "HyWIAPrunedMixin", "pruned_class", "resize_linear_layers"]
