"""Per-family mapping tables, keyed by `config.model_type`. Adding a family means adding one table here."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .baichuan import BAICHUAN
from .base import Alibi, ArchitectureSpec, ConfigKeys, Projection, Variant
from .bert import BERT
from .bloom import BLOOM
from .falcon import FALCON
from .gemma import GEMMA, GEMMA2, GEMMA3, GEMMA3_TEXT
from .gpt2 import GPT2
from .gpt_neox import GPT_NEOX
from .llama import LLAMA
from .mistral import MISTRAL
from .opt import OPT
from .phi3 import PHI3
from .qwen2 import QWEN2
from .qwen3 import QWEN3

TABLES = (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA, GEMMA2, GEMMA3_TEXT, GEMMA3, PHI3, GPT_NEOX, OPT, FALCON, GPT2, BLOOM)
TABLES += (BAICHUAN, BERT)

ARCHITECTURES: dict[str, ArchitectureSpec] = {model_type: spec for spec in TABLES for model_type in spec.model_types}


class UnsupportedArchitectureError(ValueError):
    """The model's family has no mapping table."""


def get_architecture(model_type_or_config: str | Any | None) -> ArchitectureSpec:
    """The mapping table for a `model_type`, or for a model config (its variant and multi-query detection applied).

    Raises an error listing the supported model types when there is no table.
    """
    config = None if model_type_or_config is None or isinstance(model_type_or_config, str) else model_type_or_config
    model_type = getattr(config, "model_type", None) if config is not None else model_type_or_config
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"HyWIA has no mapping table for model_type={model_type!r}. Supported: {sorted(ARCHITECTURES)}. "
            "To add a family, write one ArchitectureSpec table in optimum_hywia/architectures/ "
            "(see docs/architectures.md)."
        )
    spec = ARCHITECTURES[model_type]
    return spec.for_config(config) if config is not None else spec


# The transformers Auto classes a model class can be loaded with, most specific first:
# (Auto class, its class-name mapping in `transformers.models.auto.modeling_auto`,
#  class-name endings that name it for a class transformers does not list (remote code, HyWIA overrides),
#  pipeline task of the checkpoint)
AUTO_CLASSES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    (
        "AutoModelForImageTextToText",
        "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
        ("ForConditionalGeneration",),
        "image-text-to-text",
    ),
    ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", ("ForCausalLM", "LMHeadModel"), "text-generation"),
    ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES", ("ForMaskedLM",), "fill-mask"),
    (
        "AutoModelForSequenceClassification",
        "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
        ("ForSequenceClassification",),
        "text-classification",
    ),
    (
        "AutoModelForTokenClassification",
        "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
        ("ForTokenClassification",),
        "token-classification",
    ),
    ("AutoModel", "MODEL_MAPPING_NAMES", (), "feature-extraction"),
)
# Auto classes whose models take `labels` and return the next-token loss (what LoRA recovery trains)
GENERATIVE_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForImageTextToText")


def auto_class_for(
    model_class_name: str | None, auto_map: dict[str, Any] | None = None, preferred: str | None = None
) -> str:
    """The transformers Auto class that loads a model class, e.g. `"LlamaForCausalLM"` -> `"AutoModelForCausalLM"`.

    In order: the `auto_map` entry (a checkpoint's remote code or HyWIA override) naming the class; `preferred` (the
    family's `ArchitectureSpec.auto_class`) when transformers maps the class to it (Gemma 3's
    `Gemma3ForConditionalGeneration` loads with both `AutoModelForImageTextToText` and `AutoModelForCausalLM`); the
    most specific Auto class of `AUTO_CLASSES` that transformers maps the class to; the class-name ending
    (`...ForCausalLM`); `AutoModel`. No class name: `AutoModelForCausalLM`.
    """
    if not model_class_name:
        return "AutoModelForCausalLM"
    for auto_class, reference in (auto_map or {}).items():
        if isinstance(reference, str) and reference.rpartition(".")[2] == model_class_name:
            return auto_class
    from transformers.models.auto import modeling_auto

    def maps(auto_class: str) -> bool:
        mapping_name = next((mapping for name, mapping, _, _ in AUTO_CLASSES if name == auto_class), None)
        return mapping_name is not None and model_class_name in getattr(modeling_auto, mapping_name, {}).values()

    if preferred is not None and maps(preferred):
        return preferred
    for auto_class, _, _, _ in AUTO_CLASSES:
        if maps(auto_class):
            return auto_class
    for auto_class, _, suffixes, _ in AUTO_CLASSES:
        if suffixes and model_class_name.endswith(suffixes):
            return auto_class
    return "AutoModel"


def pipeline_task_for(auto_class: str) -> str:
    """The transformers pipeline task of the checkpoints an Auto class loads (`"feature-extraction"` if unknown)."""
    return next((task for name, _, _, task in AUTO_CLASSES if name == auto_class), "feature-extraction")


def _loads_with(spec: ArchitectureSpec) -> str:
    if spec.remote_code:
        return "its own remote code + override: `trust_remote_code=True`"
    if not spec.vanilla_loadable:
        return "override always: `trust_remote_code=True` or `load_pruned_model`"
    if spec.config_keys.head_dim is None:
        return "vanilla if only the MLP is pruned; pruned heads: override"
    return "vanilla" + (" (head counts dividing hidden_size)" if spec.hidden_divisible_by_heads else "")


def _compensation_bias(spec: ArchitectureSpec) -> str:
    """Where a compensated projection (`reconstruction`) gets a bias: its own, or one a config switch adds."""
    own = "where the checkpoint's projection has one"
    if not spec.bias_switches:
        return own
    switched = ", ".join(f"{kind}: `{key}` switched on" for kind, key in spec.bias_switches)
    return f"{switched}; else {own}"


def _residual_points(spec: ArchitectureSpec) -> str:
    """Where compensation's drift correction reads each kind's residual stream (`reconstruction_drift`)."""
    if not spec.residual_points:
        return "- (own output only)"
    return ", ".join(f"{kind}: {f'`{path}` input' if path else 'layer output'}" for kind, path in spec.residual_points)


def architectures_markdown() -> str:
    """The supported-families table of docs/architectures.md, generated from the mapping tables."""
    lines = [
        "| model_type | family | decoder layers | attention group (dim) | MLP channel (dim) | fused layout "
        "| uniform layout loads with | compensation bias | drift correction reads | quirks |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model_type, spec in sorted(ARCHITECTURES.items()):
        attention = ", ".join(f"`{p.path}` ({p.dim})" for p in spec.attention)
        mlp = ", ".join(f"`{p.path}` ({p.dim})" for p in spec.mlp)
        fused = ", ".join(spec.fused) or "-"
        if any("attention" in variant.changes for variant in spec.variants):
            fused += " (layout chosen from the config)"
        lines.append(
            f"| `{model_type}` | {spec.name} | `{spec.layers}` | {attention} | {mlp} | {fused} | {_loads_with(spec)} "
            f"| {_compensation_bias(spec)} | {_residual_points(spec)} | {spec.notes or '-'} |"
        )
    lines += [
        "",
        "Config-dependent variants (applied in order; every one whose condition holds):",
        "",
        "| model_type | when | attention group (dim) | fused layout | ALiBi: module, inputs (head layout) "
        "| drift correction reads |",
        "|---|---|---|---|---|---|",
    ]
    for model_type, spec in sorted(ARCHITECTURES.items()):
        for variant in spec.variants:
            changed = replace(spec, **variant.changes)
            attention = ", ".join(f"`{p.path}` ({p.dim})" for p in changed.attention)
            fused = ", ".join(changed.fused) or "-"
            alibi = "-"
            if changed.alibi is not None:
                inputs = ", ".join(f"`{name}` ({layout})" for name, layout in changed.alibi.inputs)
                alibi = f"`{changed.alibi.path}`: {inputs}"
            points = _residual_points(changed) if "residual_points" in variant.changes else "(as above)"
            lines.append(f"| `{model_type}` | {variant.when} | {attention} | {fused} | {alibi} | {points} |")
    return "\n".join(lines) + "\n"


__all__ = [
    "AUTO_CLASSES",
    "GENERATIVE_AUTO_CLASSES",
    "Alibi",
    "architectures_markdown",
    "ARCHITECTURES",
    "ArchitectureSpec",
    "ConfigKeys",
    "Projection",
    "UnsupportedArchitectureError",
    "Variant",
    "auto_class_for",
    "get_architecture",
    "pipeline_task_for",
]
