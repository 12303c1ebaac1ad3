"""Gemma 1/2/3: the Llama layout with `head_dim` independent of the hidden size, tied embeddings, GQA or multi-query
(Gemma-2B has one KV head: its groups are then single query heads), sliding-window layers (Gemma 2/3) and q/k norms
over `head_dim` (Gemma 3). None of these is touched by pruning."""

from dataclasses import replace

from .llama import LLAMA

GEMMA = replace(
    LLAMA,
    name="Gemma",
    bias_switches=(("attention", "attention_bias"),),
    model_types=("gemma",),
    hidden_divisible_by_heads=False,
    notes="head_dim independent of hidden_size; multi-query (1 KV head) prunes single query heads",
)
GEMMA2 = replace(
    LLAMA,
    name="Gemma 2",
    residual_points=(),  # post-norms: attention and MLP outputs are normalised before the residual sum
    bias_switches=(("attention", "attention_bias"),),
    model_types=("gemma2",),
    notes="sliding-window layers, logit soft-capping; config requires hidden_size % heads == 0",
)
GEMMA3_TEXT = replace(
    LLAMA,
    name="Gemma 3 (text)",
    residual_points=(),  # post-norms: attention and MLP outputs are normalised before the residual sum
    bias_switches=(("attention", "attention_bias"),),
    model_types=("gemma3_text",),
    notes="q/k norms over head_dim, sliding-window layers; config requires hidden_size % heads == 0",
)
GEMMA3 = replace(
    GEMMA3_TEXT,
    name="Gemma 3 (multimodal)",
    model_types=("gemma3",),
    layers="model.language_model.layers",
    text_config="text_config",
    notes="language model of Gemma3ForConditionalGeneration; widths live in config.text_config",
)
