"""Physical removal of groups: slice weight matrices in place and rewrite the model config to match."""

from __future__ import annotations

import torch
from torch import nn

from .architectures import ArchitectureSpec
from .groups import GroupSet, build_group_sets, decoder_layers, head_dim
from .modeling.modeling_hywia import AUTO_MAP_MODULE, CLASS_PREFIX

Key = tuple[int, str]

OVERRIDE_KEYS = ("hywia_linear_shapes", "hywia_layer_widths")


def slice_linear(module: nn.Linear, indices: torch.Tensor, dim: str) -> None:
    """Keep only `indices` of the output rows (`dim="out"`) or input columns (`dim="in"`) of `module`."""
    indices = indices.to(module.weight.device)
    with torch.no_grad():
        if dim == "out":
            module.weight = nn.Parameter(module.weight.index_select(0, indices).clone(), module.weight.requires_grad)
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.index_select(0, indices).clone(), module.bias.requires_grad)
            module.out_features = len(indices)
        else:
            module.weight = nn.Parameter(module.weight.index_select(1, indices).clone(), module.weight.requires_grad)
            module.in_features = len(indices)


def remove_groups(group_sets: list[GroupSet], kept: dict[Key, torch.Tensor]) -> None:
    """Slice every projection of every set so that only the `kept` groups remain."""
    for group_set in group_sets:
        groups = kept[group_set.key]
        if len(groups) == 0:
            raise ValueError(f"Refusing to remove every {group_set.kind} group of layer {group_set.layer}.")
        for i, projection in enumerate(group_set.projections):
            slice_linear(projection.module, group_set.indices(i, groups), projection.spec.dim)


def layer_widths(model: nn.Module, spec: ArchitectureSpec) -> list[dict[str, int]]:
    """Heads, KV heads and MLP width of every decoder layer, read from the modules."""
    _, layers = decoder_layers(model, spec)
    widths = []
    for group_set_pair in _pairs(build_group_sets(model, spec, range(len(layers)), ("attention", "mlp"))):
        attention, mlp = group_set_pair
        units = attention.num_units
        widths.append(
            {
                "num_attention_heads": units["q_heads"],
                "num_key_value_heads": units.get("kv_heads", units["q_heads"]),
                "intermediate_size": mlp.num_groups,
            }
        )
    return widths


def _pairs(group_sets: list[GroupSet]) -> list[tuple[GroupSet, GroupSet]]:
    return [(group_sets[i], group_sets[i + 1]) for i in range(0, len(group_sets), 2)]


def rewrite_config(model: nn.Module, spec: ArchitectureSpec, original_widths: list[dict[str, int]]) -> bool:
    """Describe the pruned widths in `model.config`; returns whether a vanilla config could describe them.

    When every layer has the same widths and the family's config accepts them, the width keys are rewritten and the
    checkpoint loads with vanilla transformers. Otherwise the config keeps its original widths, lists the shapes of
    every resized linear layer (`hywia_linear_shapes`) and points `auto_map` at the HyWIA modeling override.
    """
    config, keys = model.config, spec.config_keys
    widths = layer_widths(model, spec)
    dim = head_dim(config, spec)
    for key in OVERRIDE_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    auto_map = dict(getattr(config, "auto_map", None) or {})
    auto_map = {k: v for k, v in auto_map.items() if not v.startswith(f"{AUTO_MAP_MODULE}.")}
    uniform = all(w == widths[0] for w in widths)
    heads = widths[0]["num_attention_heads"]
    hidden = getattr(config, keys.hidden_size)
    vanilla = uniform and (not spec.hidden_divisible_by_heads or hidden % heads == 0)
    if vanilla:
        setattr(config, keys.num_heads, heads)
        if keys.num_kv_heads:
            setattr(config, keys.num_kv_heads, widths[0]["num_key_value_heads"])
        if keys.head_dim:
            setattr(config, keys.head_dim, dim)
        setattr(config, keys.intermediate_size, widths[0]["intermediate_size"])
    else:
        layers_path, _ = decoder_layers(model, spec)
        shapes = {}
        for layer, (before, after) in enumerate(zip(original_widths, widths)):
            if before == after:
                continue
            for projection in (*spec.attention, *spec.mlp):
                module = model.get_submodule(f"{layers_path}.{layer}.{projection.path}")
                shapes[f"{layers_path}.{layer}.{projection.path}"] = [module.out_features, module.in_features]
        config.hywia_linear_shapes = shapes
        config.hywia_layer_widths = widths
        base_class = type(model).__name__.removeprefix(CLASS_PREFIX)
        auto_class = "AutoModelForCausalLM" if base_class.endswith("ForCausalLM") else "AutoModel"
        auto_map[auto_class] = f"{AUTO_MAP_MODULE}.{CLASS_PREFIX}{base_class}"
    if auto_map:
        config.auto_map = auto_map
    elif hasattr(config, "auto_map"):
        delattr(config, "auto_map")
    return vanilla
