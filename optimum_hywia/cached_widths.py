"""Integer attributes that attention and MLP modules cache from the config (`num_heads`, `num_key_value_groups`, ...).

After surgery each such attribute must hold what the module's own class builds for the pruned widths. The values are
derived, not listed per family, so an attribute a new transformers release adds is handled without anyone knowing its
name: the model class is built on the meta device from a copy of the config that describes one layer's pruned widths,
and every integer attribute of the layer's attention and MLP modules that differs from a build of the unpruned
config is taken from it.

One case is ambiguous. Where a family derives the head size as `hidden_size // heads` (Falcon, GPT-2, BLOOM, ...),
the only config that describes fewer heads of the same size also has a smaller `hidden_size`; an attribute that held
`hidden_size` before pruning may then be the residual width (it stays) or the attention width (it follows the heads).
The family table says which (`ArchitectureSpec.residual_attributes` / `attention_width_attributes`); an attribute it
does not classify raises `CachedWidthError`, which the family tests turn into a failing test on a new release.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .architectures import ArchitectureSpec
from .groups import decoder_layers, head_dim

Widths = dict[str, int]


class CachedWidthError(RuntimeError):
    """A module caches a width whose meaning after pruning the family table does not state."""


def owner_paths(spec: ArchitectureSpec, kind: str) -> tuple[str, ...]:
    """The modules (relative to a decoder layer) that own a kind's projections, e.g. `("self_attn",)`."""
    return tuple(dict.fromkeys(p.path.rpartition(".")[0] for p in spec.projections(kind)))


def int_attributes(module: nn.Module) -> dict[str, int]:
    """The public integer attributes a module instance holds (booleans excluded)."""
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_") and isinstance(value, int) and not isinstance(value, bool)
    }


def reference_config(config, spec: ArchitectureSpec, kind: str, widths: Widths):
    """A copy of `config` describing `widths` for one module kind, with the original head size.

    Where the family's config has no head-size key, fewer heads of the same size need a smaller `hidden_size`.
    Returns `None` when the config cannot describe the widths (an MLP width hard-coded from `hidden_size`).
    """
    keys = spec.config_keys
    config = base_config(config)
    target = spec.widths_config(config)
    if kind == "mlp":
        if keys.intermediate_size is None:
            return None
        setattr(target, keys.intermediate_size, widths["intermediate_size"])
        return config
    dim = head_dim(config, spec)
    heads = widths["num_attention_heads"]
    if keys.head_dim:
        setattr(target, keys.head_dim, dim)
    elif heads != getattr(target, keys.num_heads):
        setattr(target, keys.hidden_size, heads * dim)
    setattr(target, keys.num_heads, heads)
    if keys.num_kv_heads:
        setattr(target, keys.num_kv_heads, widths["num_key_value_heads"])
    return config


def base_config(config):
    """A copy of `config` without the HyWIA override's keys: what the family's own class builds from."""
    from .surgery import OVERRIDE_KEYS

    config = copy.deepcopy(config)
    for key in (*OVERRIDE_KEYS, "auto_map"):
        if hasattr(config, key):
            delattr(config, key)
    return config


def _base_class(model: nn.Module) -> type:
    from .modeling.modeling_hywia import HyWIAPrunedMixin

    cls = type(model)
    while issubclass(cls, HyWIAPrunedMixin):  # the override class re-creates pruned shapes: build its base
        cls = cls.__mro__[2]
    return cls


@contextmanager
def _quiet() -> Iterator[None]:
    transformers_logger = logging.getLogger("transformers")
    level = transformers_logger.level
    transformers_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        transformers_logger.setLevel(level)


def build_on_meta(model_class: type, config) -> nn.Module:
    """`model_class(config)` with no memory and no weight initialisation cost."""
    with torch.device("meta"), _quiet():
        return model_class(config)


def _kind_key(spec: ArchitectureSpec, kind: str, widths: Widths) -> tuple[int, ...]:
    if kind == "mlp":
        return (widths["intermediate_size"],)
    return (widths["num_attention_heads"], widths["num_key_value_heads"] if spec.config_keys.num_kv_heads else 0)


def _classify(spec: ArchitectureSpec, owner: str, name: str, before: int, after: int, hidden: int, where: str):
    """The value an attribute that differs between the unpruned and the pruned builds must hold."""
    qualified = f"{owner}.{name}"
    if spec.config_keys.head_dim is not None or before != hidden:
        return after
    if qualified in spec.residual_attributes:
        return before
    if qualified in spec.attention_width_attributes:
        return after
    raise CachedWidthError(
        f"{where}.{name} holds hidden_size ({hidden}) in the unpruned model and the {spec.name} table does not say "
        f"whether it stays the residual width or follows the pruned attention width: add {qualified!r} to "
        "`residual_attributes` or `attention_width_attributes` in optimum_hywia/architectures/."
    )


def derived_attributes(model: nn.Module, spec: ArchitectureSpec, widths: list[Widths]) -> dict[str, dict[str, int]]:
    """{module path: {attribute: value}} for every cached width that the pruned `widths` change.

    `model.config` must still describe the widths the model was built with (the surgery rewrites it afterwards).
    """
    model_class = _base_class(model)
    layers_path, _ = decoder_layers(model, spec)
    unpruned_layers = build_on_meta(model_class, base_config(model.config)).get_submodule(layers_path)
    unpruned_widths = _config_widths(model.config, spec)
    hidden = getattr(spec.widths_config(model.config), spec.config_keys.hidden_size)
    derived: dict[str, dict[str, int]] = {}
    for kind in ("attention", "mlp"):
        references: dict[tuple[int, ...], nn.Module | None] = {}
        for index, layer_widths in enumerate(widths):
            key = _kind_key(spec, kind, layer_widths)
            if key == _kind_key(spec, kind, unpruned_widths):
                continue
            if key not in references:
                config = reference_config(model.config, spec, kind, layer_widths)
                references[key] = None if config is None else build_on_meta(model_class, config)
            if references[key] is None:
                continue
            reference_layer = references[key].get_submodule(layers_path)[index]
            for owner in owner_paths(spec, kind):
                before = int_attributes(unpruned_layers[index].get_submodule(owner))
                after = int_attributes(reference_layer.get_submodule(owner))
                where = f"{type(unpruned_layers[index].get_submodule(owner)).__name__} at {layers_path}.{index}.{owner}"
                for name, value in before.items():
                    if name not in after or after[name] == value:
                        continue
                    target = _classify(spec, owner, name, value, after[name], hidden, where)
                    if target != value:
                        derived.setdefault(f"{layers_path}.{index}.{owner}", {})[name] = target
    return derived


def _config_widths(config, spec: ArchitectureSpec) -> Widths:
    target, keys = spec.widths_config(config), spec.config_keys
    heads = getattr(target, keys.num_heads)
    return {
        "num_attention_heads": heads,
        "num_key_value_heads": getattr(target, keys.num_kv_heads) if keys.num_kv_heads else heads,
        "intermediate_size": getattr(target, keys.intermediate_size) if keys.intermediate_size else 0,
    }
