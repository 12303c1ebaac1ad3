"""Perplexity over non-overlapping windows of real text."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm


def _token_ids(text: Any, tokenizer: Any) -> torch.Tensor:
    if isinstance(text, torch.Tensor):
        return text.flatten().long()
    if type(text).__name__ == "Dataset" and hasattr(text, "column_names"):
        column = "text" if "text" in text.column_names else text.column_names[0]
        text = list(text[column])
    if isinstance(text, os.PathLike) or (isinstance(text, str) and len(text) < 4096 and Path(text).is_file()):
        text = Path(text).read_text(encoding="utf-8")
    if isinstance(text, (list, tuple)):
        text = "\n\n".join(text)
    if not isinstance(text, str):
        raise ValueError(f"Unsupported evaluation text of type {type(text).__name__}.")
    if tokenizer is None:
        raise ValueError("Perplexity on text needs a tokenizer.")
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def perplexity(
    model: torch.nn.Module,
    tokenizer: Any = None,
    text: Any = None,
    sequence_length: int = 512,
    max_windows: int | None = None,
    batch_size: int = 1,
    show_progress: bool = True,
) -> float:
    """exp(mean token NLL) over consecutive `sequence_length`-token windows of `text`, each scored on its own.

    `text`: a string, a list of strings (joined by blank lines), a text file path, a `datasets.Dataset` or token ids.
    """
    ids = _token_ids(text, tokenizer)
    num_windows = len(ids) // sequence_length
    if max_windows is not None:
        num_windows = min(num_windows, max_windows)
    if num_windows < 1:
        raise ValueError(f"The text has {len(ids)} tokens, fewer than one window of {sequence_length}.")
    windows = ids[: num_windows * sequence_length].view(num_windows, sequence_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for batch in tqdm(torch.split(windows, batch_size), desc="perplexity", disable=not show_progress):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += float(nll)
            total_tokens += batch[:, 1:].numel()
    model.train(was_training)
    return math.exp(total_nll / total_tokens)
