"""Prefill and decode throughput of a causal LM (medians over repeats)."""

from __future__ import annotations

import statistics
import time

import torch


def measure_throughput(
    model: torch.nn.Module,
    batch_size: int = 1,
    prompt_length: int = 128,
    new_tokens: int = 32,
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Tokens per second of prefill (one forward of the prompt) and of greedy decoding with the KV cache."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (batch_size, prompt_length), generator=generator).to(device)
    prefill_times, decode_times = [], []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for run in range(warmup + repeats):
            start = time.perf_counter()
            output = model(input_ids=prompt, use_cache=True)
            prefill = time.perf_counter() - start
            cache = output.cache
            token = output.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for _ in range(new_tokens):
                output = model(input_ids=token, cache=cache, use_cache=True)
                cache = output.cache
                token = output.logits[:, -1:].argmax(-1)
            decode = time.perf_counter() - start
            if run >= warmup:
                prefill_times.append(prefill)
                decode_times.append(decode)
    model.train(was_training)
    return {
        "prefill_tokens_per_s": batch_size * prompt_length / statistics.median(prefill_times),
        "decode_tokens_per_s": batch_size * new_tokens / statistics.median(decode_times),
        "batch_size": batch_size,
        "prompt_length": prompt_length,
        "new_tokens": new_tokens,
    }
