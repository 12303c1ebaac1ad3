"""Prefill and decode throughput of a causal LM (medians over repeats)."""

from __future__ import annotations

import inspect
import statistics
import time
from typing import Any

import torch

from ..offload import execution_device


def _cache_argument(model: torch.nn.Module) -> str:
    """The forward keyword of the KV cache: `cache` in recent transformers, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_throughput(
    model: torch.nn.Module,
    batch_size: int = 1,
    prompt_length: int = 128,
    new_tokens: int = 32,
    repeats: int = 3,
    warmup: int = 1,
    vocab_size: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Tokens per second of prefill (one forward of a random prompt) and of greedy decoding with the KV cache.

    Returns the medians over `repeats` timed runs (after `warmup` untimed ones) as `prefill_tokens_per_s` and
    `decode_tokens_per_s`, with `batch_size`, `prompt_length` and `new_tokens`. Prompt ids are drawn from
    `vocab_size` (default `model.config.vocab_size`) with `seed`.
    """
    if min(batch_size, prompt_length, new_tokens, repeats) < 1 or warmup < 0:
        raise ValueError("batch_size, prompt_length, new_tokens and repeats must be >= 1 and warmup >= 0.")
    device = execution_device(model)
    vocab_size = vocab_size or model.config.vocab_size
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab_size, (batch_size, prompt_length), generator=generator).to(device)
    cache_argument = _cache_argument(model)
    prefill_times, decode_times = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for run in range(warmup + repeats):
                _synchronize(device)
                start = time.perf_counter()
                output = model(input_ids=prompt, use_cache=True)
                token = output.logits[:, -1:].argmax(-1)
                _synchronize(device)
                prefill = time.perf_counter() - start
                start = time.perf_counter()
                for _ in range(new_tokens):
                    output = model(input_ids=token, use_cache=True, **{cache_argument: _returned_cache(output)})
                    token = output.logits[:, -1:].argmax(-1)
                _synchronize(device)
                decode = time.perf_counter() - start
                if run >= warmup:
                    prefill_times.append(prefill)
                    decode_times.append(decode)
    finally:
        model.train(was_training)
    return {
        "prefill_tokens_per_s": batch_size * prompt_length / statistics.median(prefill_times),
        "decode_tokens_per_s": batch_size * new_tokens / statistics.median(decode_times),
        "batch_size": batch_size,
        "prompt_length": prompt_length,
        "new_tokens": new_tokens,
    }
