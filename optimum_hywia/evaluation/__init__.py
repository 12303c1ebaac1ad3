"""Evaluation of pruned models: perplexity, zero-shot accuracy (lm-evaluation-harness) and throughput."""

from .perplexity import evaluation_text, perplexity, window_losses
from .throughput import measure_throughput
from .zero_shot import PAPER_TASKS, evaluate_zero_shot, paired_difference

__all__ = [
    "PAPER_TASKS",
    "evaluate_zero_shot",
    "evaluation_text",
    "measure_throughput",
    "paired_difference",
    "perplexity",
    "window_losses",
]
