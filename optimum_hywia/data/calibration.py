"""Calibration data: any text or token source, cut into windows of a fixed length."""

from __future__ import annotations

from typing import Any

import torch
from transformers.utils import logging

from .inputs import check_integer_ids, is_dataset, is_token_ids, normalize_inputs, text_column

logger = logging.get_logger(__name__)

DEFAULT_NUM_SAMPLES = 256
DEFAULT_SEQUENCE_LENGTH = 128

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "DEFAULT_SEQUENCE_LENGTH",
    "check_integer_ids",
    "check_token_range",
    "held_out_windows",
    "is_dataset",
    "prepare_calibration_data",
    "text_column",
]


def prepare_calibration_data(
    data: Any,
    tokenizer: Any = None,
    num_samples: int | None = None,
    sequence_length: int | None = None,
    seed: int = 0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Token windows (a LongTensor of shape `[n, sequence_length]`, `n <= num_samples`) for calibration.

    `data` may be a list of strings, a path to a text file (`str` or `Path`), a `datasets.Dataset` (its `text`
    column, else its first string column, else `input_ids`), a LongTensor of token ids (`[N, L]` rows or a 1-D
    stream), or a list of token-id lists/tensors (see `optimum_hywia.data.inputs.normalize_inputs`). Documents are
    tokenised without special tokens and joined with the EOS token into one stream, which is cut into consecutive
    non-overlapping windows (token rows are cut one by one); when there are more windows than `num_samples`, a
    `seed`-ed random subset is kept, in stream order. With `vocab_size`, token ids outside `[0, vocab_size)` are
    refused (they would index past the embedding).

    `None` (the default) for `num_samples` / `sequence_length` means "as given" for token-id rows of one length (a
    2-D tensor, a list of equal-length sequences, an `input_ids` dataset): every row is a sample, of its own length.
    For text, a 1-D token stream or rows of different lengths, `None` means 256 windows of 128 tokens.
    """
    samples, num_samples, _ = _windows(data, tokenizer, num_samples, sequence_length, vocab_size)
    if num_samples is None:
        return samples  # token rows are samples already: all of them
    if len(samples) < num_samples:
        logger.warning(
            f"The calibration data yields {len(samples)} windows of {samples.shape[1]} tokens, fewer than the "
            f"{num_samples} requested; using {len(samples)}."
        )
        return samples
    chosen = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))[:num_samples]
    return samples[chosen.sort().values]


def held_out_windows(
    data: Any,
    tokenizer: Any = None,
    num_samples: int | None = None,
    sequence_length: int | None = None,
    seed: int = 0,
    vocab_size: int | None = None,
    length_multiple: int = 1,
    count: int | None = None,
) -> torch.Tensor:
    """Windows of `data` that share no token with the windows `prepare_calibration_data` selects with the same
    arguments: fresh text of the calibration domain, to judge choices that were fitted to the calibration windows.

    Each is `length_multiple` consecutive calibration-length windows of one stream (longer context than calibration);
    up to `count` of them (default: as many tokens as calibration), a `seed`-ed subset in stream order. Empty when
    there are none to spare (token rows given as exactly the samples, or too little text).
    """
    samples, num_samples, streams = _windows(data, tokenizer, num_samples, sequence_length, vocab_size)
    if num_samples is None or len(samples) <= num_samples:
        return samples[:0].reshape(0, samples.shape[1] * length_multiple)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))
    used = torch.zeros(len(samples), dtype=torch.bool)
    used[order[:num_samples]] = True
    blocks = [
        start
        for start in range(0, len(samples) - length_multiple + 1, length_multiple)
        if not used[start : start + length_multiple].any()
        and bool((streams[start : start + length_multiple] == streams[start]).all())
    ]
    count = count or max(num_samples // length_multiple, 1)
    chosen = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    windows = [samples[blocks[i] : blocks[i] + length_multiple].flatten() for i in chosen.tolist()]
    return torch.stack(windows) if windows else samples[:0].reshape(0, samples.shape[1] * length_multiple)


def _windows(data, tokenizer, num_samples, sequence_length, vocab_size) -> tuple[torch.Tensor, int | None, Any]:
    """Every window of `data`, the number of samples to draw from them (None: all, token rows as given), and the
    stream each window comes from."""
    for name, value in (("num_samples", num_samples), ("sequence_length", sequence_length)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 (or None for the default), got {value}.")
    streams, rows = _token_streams(data, tokenizer)
    as_given = rows and len({len(row) for row in streams}) == 1 and len(streams[0]) > 0
    if sequence_length is None:
        sequence_length = len(streams[0]) if as_given else DEFAULT_SEQUENCE_LENGTH
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
    stream_of = torch.cat([torch.full((len(window),), index) for index, window in enumerate(windows)])
    samples = torch.cat(windows)
    if vocab_size is not None:
        check_token_range(samples, vocab_size)
    if num_samples is None and not as_given:
        num_samples = DEFAULT_NUM_SAMPLES
    return samples, num_samples, stream_of


def _token_streams(data: Any, tokenizer: Any) -> tuple[list[torch.Tensor], bool]:
    """The 1-D token streams (LongTensors) of `data`, which windows must not cross, and whether they are token-id
    rows given as samples (anything but text and a single 1-D stream)."""
    items = normalize_inputs(data, "calibration data")
    if is_token_ids(items):
        return items, not (isinstance(data, torch.Tensor) and data.ndim == 1)
    if tokenizer is None:
        raise ValueError("Text calibration data needs a tokenizer: pass tokenizer= (or token ids instead of text).")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    encoded = tokenizer(items, add_special_tokens=False, verbose=False)["input_ids"]
    return [torch.tensor([token for ids in encoded for token in [*ids, *eos]], dtype=torch.long)], False


def check_token_range(ids: torch.Tensor, vocab_size: int) -> None:
    """Refuse token ids the model's embedding cannot look up."""
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"Calibration token ids span [{low}, {high}] but the model's vocabulary is [0, {vocab_size}): tokenize "
            "with the model's own tokenizer (or pass text with tokenizer=)."
        )
