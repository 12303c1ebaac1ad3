"""Evaluation of pruned models: perplexity and throughput."""

from .perplexity import perplexity
from .throughput import measure_throughput

__all__ = ["measure_throughput", "perplexity"]
