"""Per-family mapping tables, keyed by `config.model_type`. Adding a family means adding one table here."""

from __future__ import annotations

from .base import ArchitectureSpec, ConfigKeys, Projection
from .llama import LLAMA
from .mistral import MISTRAL
from .qwen2 import QWEN2

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    model_type: spec for spec in (LLAMA, MISTRAL, QWEN2) for model_type in spec.model_types
}


class UnsupportedArchitectureError(ValueError):
    """The model's family has no mapping table."""


def get_architecture(model_type: str | None) -> ArchitectureSpec:
    """The mapping table for `model_type`, or an error listing the supported ones."""
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"HyWIA has no mapping table for model_type={model_type!r}. Supported: {sorted(ARCHITECTURES)}. "
            "To add a family, write one ArchitectureSpec table in optimum_hywia/architectures/ "
            "(see docs/architectures.md)."
        )
    return ARCHITECTURES[model_type]


def architectures_markdown() -> str:
    """The supported-families table of docs/architectures.md, generated from the mapping tables."""
    lines = [
        "| model_type | family | decoder layers | attention group (dim) | MLP channel (dim) |",
        "|---|---|---|---|---|",
    ]
    for model_type, spec in sorted(ARCHITECTURES.items()):
        attention = ", ".join(f"`{p.path}` ({p.dim})" for p in spec.attention)
        mlp = ", ".join(f"`{p.path}` ({p.dim})" for p in spec.mlp)
        lines.append(f"| `{model_type}` | {spec.name} | `{spec.layers}` | {attention} | {mlp} |")
    return "\n".join(lines) + "\n"


__all__ = [
    "architectures_markdown",
    "ARCHITECTURES",
    "ArchitectureSpec",
    "ConfigKeys",
    "Projection",
    "UnsupportedArchitectureError",
    "get_architecture",
]
