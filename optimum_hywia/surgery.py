"""Physical removal of groups: slice weight matrices in place and rewrite the model config to match.

One engine for every family: the mapping table says which projections a group touches and how their sliced axis is
laid out (`groups.GroupSet.group_of_index`), which module attributes cache widths, and which config keys hold them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .architectures import ArchitectureSpec, auto_class_for
from .cached_widths import derived_attributes
from .groups import BoundProjection, GroupSet, Key, build_group_sets, decoder_layers, head_dim
from .modeling.modeling_hywia import AUTO_MAP_MODULE, CLASS_PREFIX, STRUCTURE_KEYS, apply_pruned_structure
from .offload import module_tensor, set_parameter

OVERRIDE_KEYS = (
    "hywia_linear_shapes",
    "hywia_layer_widths",
    "hywia_alibi_total_heads",
    "hywia_base_auto_map",
    *STRUCTURE_KEYS,
)
ORIGINAL_HEADS_ATTRIBUTE = "hywia_original_heads"


def slice_projection(projection: BoundProjection, indices: torch.Tensor) -> None:
    """Keep only `indices` of the sliced dimension of a linear or `Conv1D` projection (and of its bias rows)."""
    module, axis = projection.module, projection.weight_axis
    weight = module_tensor(module, "weight")  # an offloaded module's weight is read from its offload hook
    indices = indices.to(weight.device)
    with torch.no_grad():
        set_parameter(module, "weight", weight.index_select(axis, indices).clone())
        if projection.sliced_bias:
            set_parameter(module, "bias", module_tensor(module, "bias").index_select(0, indices).clone())
    if projection.transposed:
        if projection.spec.dim == "out":
            module.nf = len(indices)
        elif hasattr(module, "nx"):
            module.nx = len(indices)
    elif projection.spec.dim == "out":
        module.out_features = len(indices)
    else:
        module.in_features = len(indices)


def remove_groups(group_sets: list[GroupSet], kept: dict[Key, torch.Tensor]) -> None:
    """Slice every projection of every set so that only the `kept` groups remain.

    The first attention projection remembers the original index of every kept query head (ALiBi slopes need it).
    """
    for group_set in group_sets:
        groups = kept[group_set.key]
        if len(groups) == 0:
            raise ValueError(f"Refusing to remove every {group_set.kind} group of layer {group_set.layer}.")
        if group_set.kind == "attention":
            _record_original_heads(group_set, groups)
        for i, projection in enumerate(group_set.projections):
            slice_projection(projection, group_set.indices(i, groups))


def _record_original_heads(group_set: GroupSet, groups: torch.Tensor) -> None:
    """Store on the attention module which original query heads remain (used by ALiBi slopes)."""
    owner = group_set.projections[0].module
    heads_per_group = group_set.units_per_group["q_heads"]
    current = getattr(owner, ORIGINAL_HEADS_ATTRIBUTE, None)
    if current is None:
        current = torch.arange(group_set.unit_counts["q_heads"])
    kept_heads = (groups[:, None] * heads_per_group + torch.arange(heads_per_group)).flatten()
    setattr(owner, ORIGINAL_HEADS_ATTRIBUTE, current[kept_heads].clone())


def layer_widths(model: nn.Module, spec: ArchitectureSpec) -> list[dict[str, int]]:
    """Heads, KV heads and MLP width of every decoder layer, read from the modules."""
    _, layers = decoder_layers(model, spec)
    sets = build_group_sets(model, spec, range(len(layers)), ("attention", "mlp"))
    widths = []
    for attention, mlp in zip(sets[0::2], sets[1::2]):
        units = attention.num_units
        widths.append(
            {
                "num_attention_heads": units["q_heads"],
                "num_key_value_heads": units.get("kv_heads", units["q_heads"]),
                "intermediate_size": mlp.num_groups,
            }
        )
    return widths


def _quantity(name: str, widths: dict[str, int], dim: int) -> int:
    heads, kv_heads = widths["num_attention_heads"], widths["num_key_value_heads"]
    return {
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "heads_per_kv": heads // kv_heads,
        "attention_width": heads * dim,
        "kv_width": kv_heads * dim,
        "intermediate_size": widths["intermediate_size"],
    }[name]


def pruned_structure(model: nn.Module, spec: ArchitectureSpec, widths: list[dict[str, int]]) -> dict:
    """Per-layer module attributes, module configs and ALiBi heads that the pruned widths call for.

    `model.config` must still describe the widths the model was built with.
    """
    layers_path, layers = decoder_layers(model, spec)
    dim = head_dim(model.config, spec)
    attributes = derived_attributes(model, spec, widths)
    configs: dict[str, dict[str, int]] = {}
    alibi: dict[str, list[int]] = {}
    for layer, layer_widths_ in enumerate(widths):
        prefix = f"{layers_path}.{layer}"
        for path, key, quantity in spec.layer_config:
            configs.setdefault(f"{prefix}.{path}", {})[key] = _quantity(quantity, layer_widths_, dim)
        if spec.alibi:
            alibi[f"{prefix}.{spec.alibi.path}"] = _alibi_heads(layers[layer], spec, layer_widths_)
    structure = {"hywia_module_attributes": attributes, "hywia_module_configs": configs, "hywia_alibi_heads": alibi}
    structure["hywia_alibi_inputs"] = dict(spec.alibi.inputs) if spec.alibi else {}
    return structure


def _alibi_heads(layer: nn.Module, spec: ArchitectureSpec, widths: dict[str, int]) -> list[int]:
    heads = getattr(layer.get_submodule(spec.attention[0].path), ORIGINAL_HEADS_ATTRIBUTE, None)
    if heads is None:
        heads = torch.arange(widths["num_attention_heads"])
    return [int(h) for h in heads]


def planned_widths(
    widths_before: list[dict[str, int]], group_sets: list[GroupSet], kept: dict[Key, torch.Tensor]
) -> list[dict[str, int]]:
    """The `layer_widths` the model will have once `kept` groups of every set remain."""
    widths = [dict(w) for w in widths_before]
    for group_set in group_sets:
        count, layer = len(kept[group_set.key]), widths[group_set.layer]
        if group_set.kind == "mlp":
            layer["intermediate_size"] = count
            continue
        per_group = group_set.units_per_group
        layer["num_attention_heads"] = count * per_group["q_heads"]
        if "kv_heads" not in per_group:
            layer["num_key_value_heads"] = layer["num_attention_heads"]
        elif per_group["kv_heads"]:  # 0: one KV head shared by every group (multi-query)
            layer["num_key_value_heads"] = count * per_group["kv_heads"]
    return widths


def apply_layer_structure(model: nn.Module, spec: ArchitectureSpec, structure: dict, layer: int, kind: str) -> None:
    """Apply the part of a `pruned_structure` that concerns one layer's modules of one kind, in memory, once that
    kind is sliced (layer-by-layer compensation runs each layer right after its surgery)."""
    from .cached_widths import owner_paths

    layers_path, layers = decoder_layers(model, spec)
    prefixes = tuple(f"{layers_path}.{layer}.{owner}" for owner in owner_paths(spec, kind))

    def mine(path: str) -> bool:
        return any(path == prefix or path.startswith(prefix + ".") for prefix in prefixes)

    part = {
        key: {path: value for path, value in (structure.get(key) or {}).items() if mine(path)}
        for key in ("hywia_module_attributes", "hywia_module_configs")
    }
    if kind == "attention" and spec.alibi:
        widths = layer_widths(model, spec)[layer]
        part["hywia_alibi_heads"] = {
            f"{layers_path}.{layer}.{spec.alibi.path}": _alibi_heads(layers[layer], spec, widths)
        }
        part["hywia_alibi_inputs"] = dict(spec.alibi.inputs)
    widths_config = spec.widths_config(model.config)
    apply_pruned_structure(model, part, num_heads=getattr(widths_config, spec.config_keys.num_heads))


def vanilla_describable(
    spec: ArchitectureSpec, config, before: list[dict[str, int]], after: list[dict[str, int]]
) -> bool:
    """Whether the family's own config (and code) can describe the pruned widths."""
    if before == after:
        return True
    if not spec.vanilla_loadable or any(w != after[0] for w in after):
        return False
    keys = spec.config_keys
    widths_config = spec.widths_config(config)
    heads_changed = any(
        b[k] != a[k] for b, a in zip(before, after) for k in ("num_attention_heads", "num_key_value_heads")
    )
    if heads_changed:
        if keys.head_dim is None or spec.alibi is not None:  # ALiBi slopes follow the head count of the config
            return False
        hidden = getattr(widths_config, keys.hidden_size)
        if spec.hidden_divisible_by_heads and hidden % after[0]["num_attention_heads"]:
            return False
    mlp_changed = any(b["intermediate_size"] != a["intermediate_size"] for b, a in zip(before, after))
    return not (mlp_changed and keys.intermediate_size is None)


def rewrite_config(model: nn.Module, spec: ArchitectureSpec, original_widths: list[dict[str, int]]) -> bool:
    """Describe the pruned widths in `model.config`; returns whether a vanilla config could describe them.

    When every layer has the same widths and the family's config accepts them, the width keys are rewritten and the
    checkpoint loads with vanilla transformers. Otherwise the config keeps its original widths, lists the shapes of
    every resized layer (`hywia_linear_shapes`), the cached per-layer widths, and points `auto_map` at the HyWIA
    modeling override. Either way the in-memory model's cached widths are updated to match its weights.
    """
    config, keys = model.config, spec.config_keys
    widths_config = spec.widths_config(config)
    widths = layer_widths(model, spec)
    dim = head_dim(config, spec)
    structure = pruned_structure(model, spec, widths)
    for key in OVERRIDE_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    auto_map = dict(getattr(config, "auto_map", None) or {})
    base_auto_map = {k: v for k, v in auto_map.items() if not v.startswith(f"{AUTO_MAP_MODULE}.")}
    vanilla = vanilla_describable(spec, config, original_widths, widths)
    if vanilla:
        auto_map = base_auto_map
        if widths != original_widths:
            setattr(widths_config, keys.num_heads, widths[0]["num_attention_heads"])
            if keys.num_kv_heads:
                setattr(widths_config, keys.num_kv_heads, widths[0]["num_key_value_heads"])
            if keys.head_dim:
                setattr(widths_config, keys.head_dim, dim)
            if keys.intermediate_size:
                setattr(widths_config, keys.intermediate_size, widths[0]["intermediate_size"])
    else:
        layers_path, _ = decoder_layers(model, spec)
        shapes = {}
        for layer, (before, after) in enumerate(zip(original_widths, widths)):
            if before == after:
                continue
            for projection in (*spec.attention, *spec.mlp):
                path = f"{layers_path}.{layer}.{projection.path}"
                bound = BoundProjection(projection, model.get_submodule(path), path)
                out_features, in_features = (
                    (bound.size, bound.other_size) if projection.dim == "out" else (bound.other_size, bound.size)
                )
                shapes[path] = [out_features, in_features]
        config.hywia_linear_shapes = shapes
        config.hywia_layer_widths = widths
        for key, value in structure.items():
            if value:
                setattr(config, key, value)
        if spec.alibi:
            config.hywia_alibi_total_heads = getattr(widths_config, keys.num_heads)
        base_class = type(model).__name__.removeprefix(CLASS_PREFIX)
        if spec.remote_code:
            config.hywia_base_auto_map = base_auto_map
        auto_class = auto_class_for(base_class, base_auto_map, preferred=spec.auto_class)
        auto_map = dict(base_auto_map)
        auto_map[auto_class] = f"{AUTO_MAP_MODULE}.{CLASS_PREFIX}{base_class}"
    if auto_map:
        config.auto_map = auto_map
    elif hasattr(config, "auto_map"):
        delattr(config, "auto_map")
    model.hywia_auto_map = dict(auto_map)
    apply_pruned_structure(model, structure, num_heads=getattr(widths_config, keys.num_heads))
    return vanilla


def restore_auto_map(model: nn.Module, folder: str | os.PathLike) -> None:
    """Put the pruned model's `auto_map` back into a saved config.json.

    `save_pretrained` of a remote-code model (Baichuan) copies its modeling files, which the pruned checkpoint
    keeps, but also points `auto_map` back at its own class instead of the HyWIA override.
    """
    intended = getattr(model, "hywia_auto_map", None)
    path = Path(folder) / "config.json"
    if intended is None or not path.exists():
        return
    saved = json.loads(path.read_text())
    if (saved.get("auto_map") or {}) == intended:
        return
    if intended:
        saved["auto_map"] = intended
    else:
        saved.pop("auto_map", None)
    path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    model.config.auto_map = dict(intended)
