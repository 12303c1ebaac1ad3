"""Mapping tables: lookup, clear errors, and the generated docs table."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimum_hywia.architectures import (
    ARCHITECTURES,
    UnsupportedArchitectureError,
    architectures_markdown,
    get_architecture,
)


def test_every_table_is_registered_under_its_model_types():
    for model_type, spec in ARCHITECTURES.items():
        assert model_type in spec.model_types
        assert get_architecture(model_type) is spec
        assert {p.dim for p in spec.attention} == {"in", "out"} and {p.dim for p in spec.mlp} == {"in", "out"}


def test_unknown_model_type_lists_the_supported_ones_and_how_to_add_one():
    with pytest.raises(
        UnsupportedArchitectureError, match=r"model_type='mamba'.*Supported: \[.*'llama'.*docs/architectures.md"
    ):
        get_architecture("mamba")


def test_docs_table_is_generated_from_the_tables():
    docs = (Path(__file__).parent.parent / "docs" / "architectures.md").read_text()
    assert architectures_markdown() in docs
