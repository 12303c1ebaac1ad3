"""The load stage: a model and its tokenizer from a Hub id, a folder or a GGUF file, checked for slicing."""

from __future__ import annotations

import os
from typing import Any

import transformers
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from .architectures import get_architecture
from .offload import has_meta_parameters, offloaded_parameter_names

# from_pretrained arguments that the config and tokenizer loaders take too
SHARED_KWARGS = ("gguf_file", "revision", "token", "cache_dir", "local_files_only", "subfolder", "trust_remote_code")


def load_model_and_tokenizer(
    model_or_path: str | os.PathLike, model_class: str | type | None, tokenizer: Any, kwargs: dict[str, Any]
) -> tuple[PreTrainedModel, Any]:
    """The model, loaded with `model_class` or its family table's Auto class, and its tokenizer unless given."""
    loader = model_loader(model_or_path, model_class, kwargs)
    model = loader.from_pretrained(model_or_path, **kwargs)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_or_path, **{k: kwargs[k] for k in SHARED_KWARGS if k in kwargs})
    return model, tokenizer


def model_loader(model_or_path: str | os.PathLike, model_class: str | type | None, kwargs: dict[str, Any]) -> Any:
    """The class whose `from_pretrained` loads `model_or_path`: `model_class`, or the family table's Auto class."""
    if model_class is None:
        model_config = AutoConfig.from_pretrained(model_or_path, **{k: kwargs[k] for k in SHARED_KWARGS if k in kwargs})
        model_class = get_architecture(model_config).auto_class
    if isinstance(model_class, str):
        name = model_class
        model_class = getattr(transformers, name, None)
        if model_class is None:
            raise ValueError(f"model_class={name!r} is not a transformers class (e.g. 'AutoModel', 'BertModel').")
    if not (isinstance(model_class, type) and callable(getattr(model_class, "from_pretrained", None))):
        raise TypeError(f"model_class must be a transformers Auto or model class (or its name), got {model_class!r}.")
    return model_class


def check_prunable(model: PreTrainedModel) -> None:
    """Refuse models whose weights cannot be sliced; detach GGUF's quantizer (its weights are plain floats)."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = str(getattr(getattr(quantizer, "quantization_config", None), "quant_method", "")).lower()
    if quantizer is not None and "gguf" not in method:
        raise ValueError(
            f"The model is quantized ({method}); HyWIA slices float weights. Load it without a "
            "quantization_config (float32 or bfloat16), prune, then quantize the pruned model."
        )
    offloaded = offloaded_parameter_names(model) if has_meta_parameters(model) else set()
    for name, param in model.named_parameters():
        if param.device.type == "meta" and name not in offloaded:
            raise ValueError(
                f"Parameter {name} is on the meta device and no accelerate offload hook restores it (the model is "
                "not materialised): HyWIA needs every weight resident, or offloaded by accelerate. CPU/disk offload "
                "IS supported: load the model with a device_map (e.g. HyWIAPruner.from_pretrained(model_id, "
                "device_map='auto', offload_folder='offload')), whose offload hooks restore the weights around "
                "each forward; the pruned weights of offloaded layers are then held in CPU RAM."
            )
        if not param.dtype.is_floating_point:
            raise ValueError(f"Parameter {name} has dtype {param.dtype}; HyWIA needs float weights.")
    if quantizer is not None:  # GGUF weights are dequantized to plain floats at load time: only detach the quantizer
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
