# Copyright 2026 The optimum-hywia authors. Apache-2.0.
"""Modeling override for HyWIA-pruned checkpoints whose widths a vanilla config cannot describe.

optimum-hywia copies this fixed file, unchanged, into such checkpoints; it is never generated from user input.
`config.auto_map` names a class `HyWIA<BaseClass>` (e.g. `HyWIALlamaForCausalLM`): it is the base class itself (from
transformers, or from the checkpoint's own remote code, named in `config.hywia_base_auto_map`), adjusted right after
it is built, before the weights are loaded, from data in the config:

- `hywia_linear_shapes` {path: [out_features, in_features]}: linear / Conv1D layers re-created at their pruned shapes;
- `hywia_module_attributes` {path: {attribute: value}}: per-layer attributes that cache a width (`num_heads`, ...);
- `hywia_module_configs` {path: {key: value}}: modules that read widths from `self.config` get their own copy;
- `hywia_alibi_heads` {path: [original head index, ...]}: ALiBi attention modules receive the bias of their kept
  heads only, so every head keeps the slope of its original index; `hywia_alibi_inputs` {argument: layout} names the
  per-head tensors they receive (`"batch_heads"`: `[batch * heads, ...]` or `[batch, heads, ...]`, BLOOM's and
  Falcon's `alibi`; `"heads"`: `[..., heads, query, key]`, Baichuan-13B's `attention_mask`, Falcon's 4-d mask).

Everything else (attention, rotary, KV cache, generation) is the base implementation.
"""

import copy
import inspect
import sys

import torch
import transformers
from torch import nn

CLASS_PREFIX = "HyWIA"
AUTO_MAP_MODULE = "modeling_hywia"
STRUCTURE_KEYS = ("hywia_module_attributes", "hywia_module_configs", "hywia_alibi_heads", "hywia_alibi_inputs")


def _submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        # the checkpoint was saved with its task head and is loaded without it (e.g. AutoModel)
        prefix = getattr(model, "base_model_prefix", "")
        if not (prefix and path.startswith(prefix + ".")):
            raise
        return model.get_submodule(path[len(prefix) + 1 :])


def resize_linear_layers(model: nn.Module, shapes: dict) -> None:
    """Give each linear (or transposed `Conv1D`) layer named in `shapes` ({path: [out, in]}) that shape, in place."""
    for path, (out_features, in_features) in shapes.items():
        module = _submodule(model, path)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise TypeError(f"hywia_linear_shapes names {path}, a {type(module).__name__}, not a linear layer.")
        transposed = isinstance(module, transformers.pytorch_utils.Conv1D)
        shape = (int(in_features), int(out_features)) if transposed else (int(out_features), int(in_features))
        factory = {"device": weight.device, "dtype": weight.dtype}
        module.weight = nn.Parameter(torch.empty(shape, **factory), weight.requires_grad)
        if getattr(module, "bias", None) is not None:
            module.bias = nn.Parameter(torch.empty(int(out_features), **factory), module.bias.requires_grad)
        if transposed:
            module.nf = int(out_features)
            if hasattr(module, "nx"):
                module.nx = int(in_features)
        else:
            module.out_features, module.in_features = int(out_features), int(in_features)


def _select_heads(value: torch.Tensor, layout: str, total: int, heads: list, name: str) -> torch.Tensor:
    index = torch.tensor(heads, dtype=torch.long, device=value.device)
    if layout == "batch_heads":
        if value.ndim == 4 and value.shape[1] == total:  # already unfolded, [batch, heads, query, key] (Falcon)
            return value.index_select(1, index)
        if value.ndim == 0 or value.shape[0] % total:
            raise ValueError(f"ALiBi input {name!r} of shape {list(value.shape)} is not [batch * {total} heads, ...].")
        batch = value.shape[0] // total
        selected = value.view(batch, total, *value.shape[1:])[:, index]
        return selected.reshape(batch * len(heads), *value.shape[1:])
    if layout == "heads":
        if value.ndim < 3 or value.shape[-3] == 1:  # no per-head axis (a mask broadcast over heads)
            return value
        if value.shape[-3] != total:
            raise ValueError(f"ALiBi input {name!r} of shape {list(value.shape)} has no axis of {total} heads at -3.")
        return value.index_select(value.ndim - 3, index)
    raise ValueError(f"Unknown ALiBi head layout {layout!r} for {name!r}: expected 'batch_heads' or 'heads'.")


def _select_alibi_heads(module: nn.Module, heads: list, inputs: dict):
    """Forward pre-hook giving `module` only the slices of its kept `heads` of every per-head input."""
    try:
        parameters = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        parameters = []
    positions = {name: parameters.index(name) for name in inputs if name in parameters}

    def select(module, args, kwargs):
        total = int(module.hywia_alibi_total_heads)
        args = list(args)
        for name, layout in inputs.items():
            if name in kwargs:
                if isinstance(kwargs[name], torch.Tensor):
                    kwargs[name] = _select_heads(kwargs[name], layout, total, heads, name)
            elif positions.get(name, len(args)) < len(args) and isinstance(args[positions[name]], torch.Tensor):
                args[positions[name]] = _select_heads(args[positions[name]], layout, total, heads, name)
        return tuple(args), kwargs

    return select


def apply_pruned_structure(model: nn.Module, structure: dict, num_heads: int | None = None) -> None:
    """Apply module attributes, per-module configs and ALiBi head selections (the `STRUCTURE_KEYS` of a config)."""
    base_config = model.config
    for path, attributes in (structure.get("hywia_module_attributes") or {}).items():
        module = _submodule(model, path)
        for name, value in attributes.items():
            if not hasattr(module, name):
                raise AttributeError(f"{type(module).__name__} at {path} has no attribute {name!r} to set.")
            setattr(module, name, value)
    for path, values in (structure.get("hywia_module_configs") or {}).items():
        module = _submodule(model, path)
        module_config = copy.copy(base_config)
        for key, value in values.items():
            setattr(module_config, key, value)
        module.config = module_config
    alibi_heads = structure.get("hywia_alibi_heads") or {}
    if alibi_heads:
        total = num_heads or structure.get("hywia_alibi_total_heads")
        inputs = structure.get("hywia_alibi_inputs")
        if not inputs:
            raise ValueError("The config lists hywia_alibi_heads without hywia_alibi_inputs: re-save the checkpoint.")
        for path, heads in alibi_heads.items():
            module = _submodule(model, path)
            handle = getattr(module, "_hywia_alibi_hook", None)
            if handle is not None:
                handle.remove()
            module.hywia_alibi_total_heads = int(total)
            selection = _select_alibi_heads(module, [int(h) for h in heads], inputs)
            module._hywia_alibi_hook = module.register_forward_pre_hook(selection, with_kwargs=True)


class HyWIAPrunedMixin:
    """Re-creates the pruned layers and cached widths right after the base model is built."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        resize_linear_layers(self, getattr(config, "hywia_linear_shapes", None) or {})
        structure = {key: getattr(config, key, None) for key in (*STRUCTURE_KEYS, "hywia_alibi_total_heads")}
        apply_pruned_structure(self, structure)


def pruned_class(base: type) -> type:
    """The pruned-model class for a model class."""
    name = CLASS_PREFIX + base.__name__
    cls = globals().get(name)
    if cls is None or cls.__mro__[2] is not base:
        cls = type(name, (HyWIAPrunedMixin, base), {"__module__": __name__})
        globals()[name] = cls
        _share_checkpoint_conversions(base, name)
    return cls


def _share_checkpoint_conversions(base: type, name: str) -> None:
    """Checkpoint key renamings transformers applies to `base` (e.g. GPT-NeoX `embed_out` -> `lm_head`) apply to the
    pruned class too; transformers skips them for classes defined outside its package unless registered."""
    try:
        from transformers import conversion_mapping
    except ImportError:  # transformers without checkpoint conversions
        return
    model_type = getattr(getattr(base, "config_class", None), "model_type", None)
    mapping = conversion_mapping.get_checkpoint_conversion_mapping(base.__name__)
    if mapping is None and model_type:
        mapping = conversion_mapping.get_checkpoint_conversion_mapping(model_type)
    if mapping is not None:
        conversion_mapping.register_checkpoint_conversion_mapping(name, mapping, overwrite=True)


_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "code_revision")


def _loaded_config_class():
    """The remote config class AutoConfig just loaded for this checkpoint (its module sits next to this one)."""
    package = __name__.rpartition(".")[0]
    checkpoint_package = package.rpartition(".")[0] if package.count(".") >= 2 else package
    found = []
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith(checkpoint_package + "."):
            continue
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, transformers.PretrainedConfig)
                and value.__module__ == module_name
                and value not in found
            ):
                found.append(value)
    return found[0] if len(found) == 1 else None


def _remote_code_class(name: str) -> type:
    """Stand-in for `HyWIA<Class>` when `<Class>` comes with the checkpoint (remote code, e.g. Baichuan).

    transformers only copies this file into its module cache, so the base class is fetched from the checkpoint's own
    modeling file (`config.hywia_base_auto_map`, the checkpoint's original `auto_map`) when the model is loaded.
    """
    base_name = name[len(CLASS_PREFIX) :]

    class HyWIARemoteCodeModel(transformers.PreTrainedModel):
        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
            from transformers.dynamic_module_utils import get_class_from_dynamic_module

            base_auto_map = getattr(config, "hywia_base_auto_map", None) or {}
            reference = next((r for r in base_auto_map.values() if r.rpartition(".")[2] == base_name), None)
            if reference is None:
                raise ValueError(
                    f"{pretrained_model_name_or_path}: config.hywia_base_auto_map names no {base_name}; the pruned "
                    "checkpoint must keep the original auto_map of its remote code."
                )
            hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
            base = get_class_from_dynamic_module(reference, pretrained_model_name_or_path, **hub_kwargs)
            kwargs.pop("code_revision", None)
            return pruned_class(base).from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)

    HyWIARemoteCodeModel.__name__ = HyWIARemoteCodeModel.__qualname__ = name
    HyWIARemoteCodeModel.__module__ = __name__
    config_class = _loaded_config_class()
    if config_class is not None:
        HyWIARemoteCodeModel.config_class = config_class
    globals()[name] = HyWIARemoteCodeModel
    return HyWIARemoteCodeModel


def __getattr__(name: str):
    # `auto_map` entries look classes up by name: build `HyWIA<Class>` on first use from its base class.
    if name.startswith(CLASS_PREFIX):
        base_name = name[len(CLASS_PREFIX) :]
        base = getattr(transformers, base_name, None)
        if isinstance(base, type) and issubclass(base, transformers.PreTrainedModel):
            return pruned_class(base)
        return _remote_code_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AUTO_MAP_MODULE",
    "CLASS_PREFIX",
    "STRUCTURE_KEYS",
    "HyWIAPrunedMixin",
    "apply_pruned_structure",
    "pruned_class",
    "resize_linear_layers",
]
