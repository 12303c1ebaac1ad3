"""Calibration data: any text or token source, cut into windows of a fixed length."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)


def prepare_calibration_data(
    data: Any,
    tokenizer: Any = None,
    num_samples: int = 32,
    sequence_length: int = 128,
    seed: int = 0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Token windows (a LongTensor of shape `[n, sequence_length]`, `n <= num_samples`) for calibration.

    `data` may be a list of strings, a path to a text file (`str` or `Path`), a `datasets.Dataset` (its `text`
    column, else its first string column, else `input_ids`), a LongTensor of token ids (`[N, L]` rows or a 1-D
    stream), or a list of token-id lists/tensors. Documents are tokenised without special tokens and joined with the
    EOS token into one stream, which is cut into consecutive non-overlapping windows (token rows are cut one by one);
    when there are more windows than `num_samples`, a `seed`-ed random subset is kept, in stream order. With
    `vocab_size`, token ids outside `[0, vocab_size)` are refused (they would index past the embedding).
    """
    if num_samples < 1 or sequence_length < 1:
        raise ValueError(f"num_samples and sequence_length must be >= 1, got {num_samples} and {sequence_length}.")
    streams = _token_streams(data, tokenizer)
    windows = [stream[: len(stream) // sequence_length * sequence_length] for stream in streams]
    windows = [window.reshape(-1, sequence_length) for window in windows if len(window)]
    if not windows:
        if len(streams) > 1:
            found = f"{len(streams)} sequences of at most {max(map(len, streams))} tokens"
        else:
            found = f"{sum(map(len, streams))} tokens"
        raise ValueError(
            f"The calibration data yields {found} but one sample needs sequence_length={sequence_length} tokens: "
            "pass more text or lower calibration_sequence_length."
        )
    samples = torch.cat(windows)
    if vocab_size is not None:
        check_token_range(samples, vocab_size)
    if len(samples) < num_samples:
        logger.warning(
            f"The calibration data yields {len(samples)} windows of {sequence_length} tokens, fewer than the "
            f"{num_samples} requested; using {len(samples)}."
        )
        return samples
    chosen = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))[:num_samples]
    return samples[chosen.sort().values]


def _token_streams(data: Any, tokenizer: Any) -> list[torch.Tensor]:
    """The 1-D token streams (LongTensors) of `data`, which windows must not cross."""
    if isinstance(data, (str, os.PathLike)):
        if not os.path.isfile(data):  # unlike Path.is_file, never raises on a long text
            raise ValueError(
                f"calibration_data string {str(data)[:60]!r} is not an existing file; pass a list of strings for raw "
                "text."
            )
        return _token_streams([Path(data).read_text(encoding="utf-8")], tokenizer)
    if isinstance(data, torch.Tensor):
        check_integer_ids(data, "calibration")
        if data.ndim == 1:
            return [data.long()] if len(data) else []
        if data.ndim == 2:
            return [row.long() for row in data]
        raise ValueError(f"calibration token ids must be 1-D or 2-D, got shape {tuple(data.shape)}.")
    if is_dataset(data):
        columns = data.column_names
        column = text_column(data)
        if column is not None:
            return _token_streams(list(data[column]), tokenizer)
        if "input_ids" in columns:
            return _token_streams([list(ids) for ids in data["input_ids"]], tokenizer)
        raise ValueError(f"The calibration dataset has no string or input_ids column (columns: {columns}).")
    if isinstance(data, Sequence) and not len(data):
        raise ValueError("The calibration data is empty: pass some text or token ids.")
    if isinstance(data, Sequence) and all(isinstance(item, str) for item in data):
        if tokenizer is None:
            raise ValueError("Text calibration data needs a tokenizer: pass tokenizer= (or token ids instead of text).")
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        encoded = tokenizer(list(data), add_special_tokens=False, verbose=False)["input_ids"]
        return [torch.tensor([token for ids in encoded for token in [*ids, *eos]], dtype=torch.long)]
    if isinstance(data, Sequence) and all(isinstance(item, (torch.Tensor, list, tuple)) for item in data):
        items = [item if isinstance(item, torch.Tensor) else torch.tensor(item) for item in data if len(item)]
        if any(item.ndim != 1 for item in items):
            raise ValueError("Each calibration token sequence in a list must be 1-D.")
        return [stream for item in items for stream in _token_streams(item, tokenizer)]
    raise ValueError(
        f"Unsupported calibration data of type {type(data).__name__}: pass a list of strings, a text file path, a "
        "datasets.Dataset or token ids."
    )


def is_dataset(data: Any) -> bool:
    """Whether `data` is a `datasets.Dataset` (checked by duck typing, so `datasets` need not be imported)."""
    return type(data).__name__ == "Dataset" and hasattr(data, "column_names") and hasattr(data, "features")


def text_column(dataset: Any) -> str | None:
    """The dataset's `text` column, else its first string column, else None."""
    columns = dataset.column_names
    strings = [c for c in columns if getattr(dataset.features[c], "dtype", None) in ("string", "large_string")]
    return "text" if "text" in columns else (strings[0] if strings else None)


def check_integer_ids(ids: torch.Tensor, what: str) -> None:
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{what} token ids must be an integer tensor, got dtype {ids.dtype}.")


def check_token_range(ids: torch.Tensor, vocab_size: int) -> None:
    """Refuse token ids the model's embedding cannot look up."""
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"Calibration token ids span [{low}, {high}] but the model's vocabulary is [0, {vocab_size}): tokenize "
            "with the model's own tokenizer (or pass text with tokenizer=)."
        )
