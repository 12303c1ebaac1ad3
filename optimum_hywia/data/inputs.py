"""The one normaliser of "any data" arguments: calibration, evaluation and recovery data, and the CLI's files.

`normalize_inputs` turns a list of strings (or records), a text/JSON/CSV/Parquet file, a `datasets.Dataset` or token
ids into either a list of texts (records kept where the caller accepts them) or a list of 1-D LongTensors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

STRUCTURED_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


def normalize_inputs(
    data: Any,
    what: str,
    *,
    raw_text: bool = False,
    records: bool = False,
    is_record: Callable[[Mapping[str, Any]], Any] | None = None,
) -> list[Any]:
    """`data` as a list of texts (`str`, and `Mapping` records with `records=True`) or of 1-D LongTensors (token ids).

    Accepted: a list/tuple of strings, records (dicts; with `records=False` their `text` field is taken) or token-id
    sequences (lists or tensors); a text file path (`str` or `os.PathLike`: `.json`/`.jsonl`/`.csv`/`.parquet` hold
    records or strings, any other file is one document); a `datasets.Dataset` (its `text` column, else its first
    string column, else `input_ids`); an integer tensor (1-D: one stream, 2-D: one sequence per row). With
    `raw_text=True` a string that is not a file is the text itself. With `records=True`, a dataset whose column names
    satisfy `is_record` gives its rows as records. Records that all carry `input_ids` and no `text` are token ids.
    `what` names the argument in errors (e.g. "calibration data"); anything else is refused with one line that says
    what is accepted.
    """
    if isinstance(data, (str, os.PathLike)):
        if raw_text and isinstance(data, str) and not os.path.isfile(data):  # never raises on a long text
            return [data]
        data = read_file(data, what)
    if isinstance(data, torch.Tensor):
        check_integer_ids(data, what)
        if data.ndim not in (1, 2):
            raise ValueError(f"{what} token ids must be 1-D or 2-D, got shape {tuple(data.shape)}.")
        return [data.long()] if data.ndim == 1 else [row.long() for row in data]
    elif is_dataset(data):
        items = _dataset_items(data, what, records, is_record)
    elif isinstance(data, Sequence) and not isinstance(data, str):
        items = list(data)
    else:
        raise ValueError(_unsupported(data, what, raw_text, records))
    if not items:
        raise ValueError(f"The {what} is empty: pass some text{', records' if records else ''} or token ids.")
    if all(isinstance(item, str) for item in items):
        return items
    if all(isinstance(item, (torch.Tensor, list, tuple)) for item in items):
        return [_token_sequence(item, what) for item in items]
    if all(isinstance(item, (str, Mapping)) for item in items):
        if all(isinstance(item, Mapping) and _holds_token_ids(item) for item in items):
            return [_token_sequence(item["input_ids"], what) for item in items]
        return items if records else [record_text(item, what) for item in items]
    raise ValueError(_unsupported(data, what, raw_text, records))


def is_token_ids(items: list[Any]) -> bool:
    """Whether a `normalize_inputs` result holds token ids (1-D tensors) rather than texts or records."""
    return bool(items) and isinstance(items[0], torch.Tensor)


def read_file(path: str | os.PathLike, what: str = "data") -> Any:
    """Strings or records of a `.json`/`.jsonl` file, a `datasets.Dataset` of a `.csv`/`.parquet` one; any other
    file is one document (a list of one string)."""
    if not os.path.isfile(path):  # unlike Path.is_file, never raises on a long string
        raise ValueError(
            f"{what} string {str(path)[:60]!r} is not an existing file; pass a list of strings for raw text (or "
            "datasets.load_dataset(...) for a Hub dataset)."
        )
    suffix = Path(path).suffix.lower()
    text = Path(path).read_text(encoding="utf-8") if suffix not in (".csv", ".parquet") else ""
    if suffix == ".jsonl":
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON Lines ({error}); write one JSON object per line.") from None
    if suffix == ".json":
        try:
            content = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}).") from None
        if isinstance(content, Mapping) and isinstance(content.get("data"), list):
            content = content["data"]
        if not isinstance(content, list):
            raise ValueError(f"{path}: expected a JSON list of strings or records (or {{'data': [...]}}).")
        return content
    if suffix in (".csv", ".parquet"):
        import datasets

        return datasets.load_dataset(suffix[1:], data_files=str(path), split="train")
    return [text]


def record_text(record: Any, what: str = "data") -> str:
    """A record's text: the string itself, or its `text` field."""
    if isinstance(record, str):
        return record
    if isinstance(record, Mapping) and isinstance(record.get("text"), str):
        return record["text"]
    described = f"a record with fields {sorted(record)}" if isinstance(record, Mapping) else type(record).__name__
    raise ValueError(
        f"A {what} record must be a string or have a 'text' field, got {described}; for instruction data use "
        "messages, instruction/output or prompt/completion fields."
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


def _dataset_items(dataset: Any, what: str, records: bool, is_record: Callable | None) -> list[Any]:
    columns = dataset.column_names
    if records and is_record is not None and is_record(dict.fromkeys(columns, "")):
        return list(dataset)
    column = text_column(dataset)
    if column is not None:
        return list(dataset[column])
    if "input_ids" in columns:
        return [list(ids) for ids in dataset["input_ids"]]
    if records:
        return list(dataset)
    raise ValueError(f"The {what} dataset has no string or input_ids column (columns: {columns}).")


def _holds_token_ids(record: Mapping[str, Any]) -> bool:
    """A tokenized record: `input_ids` and no text field (e.g. a saved `tokenizer(...)` output)."""
    return "input_ids" in record and not any(isinstance(value, str) for value in record.values())


def _token_sequence(item: Any, what: str) -> torch.Tensor:
    if isinstance(item, torch.Tensor):
        ids = item
    else:
        try:
            ids = torch.as_tensor(item) if len(item) else torch.zeros(0, dtype=torch.long)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"Each {what} token sequence in a list must be a flat list of integer ids.") from None
    check_integer_ids(ids, what)
    if ids.ndim != 1:
        raise ValueError(f"Each {what} token sequence in a list must be 1-D, got shape {tuple(ids.shape)}.")
    return ids.long()


def _unsupported(data: Any, what: str, raw_text: bool, records: bool) -> str:
    strings = "a string of text, a list of strings" if raw_text else "a list of strings"
    return (
        f"Unsupported {what} of type {type(data).__name__}: pass {strings}{' or records (dicts)' if records else ''}, "
        "a .txt/.json/.jsonl/.csv/.parquet file path, a datasets.Dataset, or token ids (an integer tensor or lists of "
        "ids)."
    )
