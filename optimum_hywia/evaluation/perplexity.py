"""Perplexity over non-overlapping windows of real text."""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.inputs import is_token_ids, normalize_inputs
from ..offload import execution_device


def _token_ids(text: Any, tokenizer: Any) -> torch.Tensor:
    """One 1-D LongTensor stream of token ids from any accepted `text`."""
    items = normalize_inputs(text, "evaluation text", raw_text=True)
    if is_token_ids(items):
        return torch.cat(items)
    if tokenizer is None:
        raise ValueError("Perplexity on text needs a tokenizer: pass tokenizer= (or token ids instead of text).")
    joined = "\n\n".join(items)
    return torch.tensor(tokenizer(joined, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)


def token_windows(
    ids: torch.Tensor, sequence_length: int, max_windows: int | None = None, spread: bool = False
) -> torch.Tensor:
    """`[n, sequence_length]` consecutive non-overlapping windows of a 1-D token stream (a short tail is dropped):
    all of them, the first `max_windows`, or with `spread=True` `max_windows` of them evenly spaced over the stream."""
    available = len(ids) // sequence_length
    if available < 1:
        raise ValueError(
            f"The text has {len(ids)} tokens, fewer than one window of sequence_length={sequence_length}: pass more "
            "text or lower sequence_length."
        )
    windows = ids[: available * sequence_length].view(available, sequence_length)
    if max_windows is None or max_windows >= available:
        return windows
    if spread:
        return windows[torch.linspace(0, available - 1, max_windows).round().long()]
    return windows[:max_windows]


def perplexity(
    model: torch.nn.Module,
    tokenizer: Any = None,
    text: Any = None,
    sequence_length: int = 512,
    max_windows: int | None = None,
    batch_size: int = 1,
    show_progress: bool = True,
    spread: bool = False,
) -> float:
    """exp(total NLL / predicted tokens) over consecutive `sequence_length`-token windows, each scored on its own.

    `text`: a string, a list of strings (joined by blank lines), a text file path, a `datasets.Dataset` (its `text`
    column, else its first string column, else `input_ids`) or token ids (1-D, or rows scored as one stream; see
    `optimum_hywia.data.inputs.normalize_inputs`). The first token of each window has no target; a tail
    shorter than one window is dropped. `max_windows` keeps only the first windows, or with `spread=True` windows
    evenly spaced over the whole text (a sample of every part of a corpus rather than its first documents).
    """
    if sequence_length < 2 or batch_size < 1 or (max_windows is not None and max_windows < 1):
        raise ValueError(
            f"Need sequence_length >= 2, batch_size >= 1 and max_windows >= 1 (or None), got {sequence_length}, "
            f"{batch_size} and {max_windows}."
        )
    windows = token_windows(_token_ids(text, tokenizer), sequence_length, max_windows, spread)
    mean_nll = sum(window_losses(model, windows, batch_size, show_progress)) / len(windows)  # windows: equal lengths
    return math.exp(mean_nll) if mean_nll < 700 else math.inf


def window_losses(
    model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 1, show_progress: bool = True
) -> list[float]:
    """Mean next-token cross-entropy (nats/token) of each row of `windows` (`[n, length]` token ids, e.g. from
    `token_windows`), each row scored on its own: the per-window losses that paired comparisons of two models need."""
    device = execution_device(model)
    was_training = model.training
    model.eval()
    losses: list[float] = []
    try:
        with torch.inference_mode():
            for batch in tqdm(torch.split(windows, batch_size), desc="perplexity", disable=not show_progress):
                batch = batch.to(device)
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
                losses += nll.mean(dim=1).tolist()
    finally:
        model.train(was_training)
    return losses


def evaluation_text(source: str = "auto") -> tuple[str, str]:
    """`(text, name)` of the standard perplexity text.

    `source="wikitext2"`: the WikiText-2 test split from the Hub (what papers report); `"wikipedia"`: the Wikipedia
    test dump that the gensim wheel ships (offline); `"auto"`: WikiText-2 when the Hub is reachable, else Wikipedia.
    """
    from ..data.models import hub_reachable
    from ..data.text_sources import wikipedia_texts

    if source not in ("auto", "wikitext2", "wikipedia"):
        raise ValueError(f"source must be 'auto', 'wikitext2' or 'wikipedia', got {source!r}.")
    if source == "wikitext2" or (source == "auto" and hub_reachable()):
        import datasets

        test = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")
        return "".join(test["text"]), "WikiText-2 (test)"
    return "\n\n".join(wikipedia_texts()), "Wikipedia (gensim test dump)"
