"""The importance registry: each method is a small class registered by name, as transformers maps a quantization
method to its `HfQuantizer` class. `HyWIAConfig(importance=...)`, the CLI's `--importance` choices, the docs table
and the pruner all read it; adding a method is one class and its registration:

```python
from optimum_hywia.importance import ImportanceMethod, register_importance

@register_importance("my_method")
class MyMethod(ImportanceMethod):
    description = "what it scores"
    needs_gradients = True  # or needs_calibration / needs_activations

    def score(self, context):
        statistics = context.gradient_statistics()  # shared, computed once
        return {gs.key: my_scores(gs, statistics) for gs in context.group_sets}
```

Third-party packages register theirs through the entry-point group `optimum_hywia.importance` (`name =
"package.module:Class"`), loaded on first use. Listing the names imports nothing heavy (the CLI's `--help` and
`optimum-cli` start without torch): the built-in classes are imported when one is first used.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from ..groups import GroupSet, Key
    from .fusion import FusionResult

Scores = dict["Key", "torch.Tensor"]
ENTRY_POINT_GROUP = "optimum_hywia.importance"
# the methods of optimum_hywia.importance.methods, in the order the docs and the CLI list them
BUILT_IN = ("hywia", "element1", "element2", "vector", "l2", "random", "wanda_sp", "flap", "slimgpt")


class ImportanceMethod(ABC):
    """One way of scoring every prunable group; higher scores are kept.

    Class attributes declare what the method needs, so the pipeline prepares only that:
    `needs_calibration` (token batches), `needs_gradients` (a forward+backward pass; implies calibration),
    `needs_activations` (forward passes only), `uses_fusion` (HyWIA's learned blend). `per_parameter`: under the
    `per_layer` layout, scores are divided by the parameters of a group so that groups of different sizes compare;
    methods whose scores already compare across layers set it to False.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = False
    needs_activations: ClassVar[bool] = False
    uses_fusion: ClassVar[bool] = False
    per_parameter: ClassVar[bool] = True
    # optional `reselect(group_set, dense_weights, input_statistics, keep, ridge, drift, metric) -> kept group
    # indices` (as `obs.reselect_by_obs`): the compensation stage calls it per layer, on the pruned model's inputs, to
    # choose which groups go (SlimGPT)
    reselect: ClassVar[Any] = None

    @property
    def needs_data(self) -> bool:
        """Whether the method reads calibration batches (any of the passes above)."""
        return self.needs_calibration or self.needs_gradients or self.needs_activations

    def comparable(self, scores: Scores, group_sets: list[GroupSet], layout: str) -> Scores:
        """`scores` as the allocation compares them: per parameter of a group under `per_layer` (`per_parameter`)."""
        if self.per_parameter and layout == "per_layer":
            return {gs.key: scores[gs.key] / gs.params_per_group for gs in group_sets}
        return scores

    @abstractmethod
    def score(self, context: ScoringContext) -> Scores | tuple[Scores, FusionResult]:
        """Scores of every group set of `context.group_sets` (one value per group), optionally with a fusion result."""


_REGISTRY: dict[str, type[ImportanceMethod]] = {}


def register_importance(name: str, *, overwrite: bool = False):
    """Class decorator registering an `ImportanceMethod` subclass under `name`."""

    def register(cls: type[ImportanceMethod]) -> type[ImportanceMethod]:
        if not (isinstance(cls, type) and issubclass(cls, ImportanceMethod)):
            raise TypeError(f"register_importance({name!r}) needs an ImportanceMethod subclass, got {cls!r}.")
        if name in BUILT_IN:
            _resolve(name)
        if name in _REGISTRY and _REGISTRY[name] is not cls and not overwrite:
            raise ValueError(f"An importance method {name!r} is already registered; pass overwrite=True to replace it.")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def _entry_points() -> dict:
    return {entry_point.name: entry_point for entry_point in entry_points(group=ENTRY_POINT_GROUP)}


def _resolve(name: str) -> type[ImportanceMethod] | None:
    if name in BUILT_IN and name not in _REGISTRY:
        from .methods import BUILT_IN_METHODS

        for built_in, cls in BUILT_IN_METHODS.items():
            if built_in not in _REGISTRY:
                cls.name = built_in
                _REGISTRY[built_in] = cls
    if name not in _REGISTRY:
        entry_point = _entry_points().get(name)
        if entry_point is not None:
            register_importance(name)(entry_point.load())
    return _REGISTRY.get(name)


def importance_names() -> tuple[str, ...]:
    """The method names: built-in, registered in this process, then those of installed entry points."""
    names = dict.fromkeys((*BUILT_IN, *_REGISTRY, *_entry_points()))
    return tuple(names)


def get_importance(name: str) -> ImportanceMethod:
    """A new instance of the method registered as `name`."""
    cls = _resolve(name)
    if cls is None:
        raise ValueError(
            f"importance={name!r} is not a registered importance method; choose from {importance_names()}."
        )
    return cls()


def importance_markdown() -> str:
    """The table of registered methods for the docs (docs/method.md)."""
    rows = ["| importance | needs | what it scores |", "|---|---|---|"]
    for name in importance_names():
        cls = _resolve(name)
        needs = [
            label
            for label, flag in (
                ("gradients", cls.needs_gradients),
                ("activations", cls.needs_activations),
                ("fusion training", cls.uses_fusion),
            )
            if flag
        ]
        if not needs:
            needs = ["calibration data"] if cls.needs_calibration else ["weights only"]
        rows.append(f"| `{name}` | {', '.join(needs)} | {cls.description} |")
    return "\n".join(rows) + "\n"


@dataclass
class ScoringContext:
    """What a method may read while scoring, with the expensive shared passes computed once on demand.

    `batches` are the calibration token batches (`None` for methods that need none); `seconds` collects the time of
    each pass for the report.
    """

    model: Any
    spec: Any
    config: Any
    group_sets: list[GroupSet]
    plan: Any
    num_layers: int
    batches: list[torch.Tensor] | None
    show_progress: bool = True
    seconds: dict[str, float] = field(default_factory=dict)
    _runner: Any = None
    _statistics: Any = None

    @property
    def is_main_process(self) -> bool:
        from ..distributed import distributed_world

        return distributed_world()[0] == 0

    def calibration_runner(self):
        """The model wrapped for calibration passes (micro-batches, autocast, gradient checkpointing)."""
        if self._runner is None:
            from ..memory import CalibrationModel

            config = self.config
            self._runner = CalibrationModel(
                self.model,
                self.spec,
                config.calibration_micro_batch_size,
                config.autocast_dtype,
                config.gradient_checkpointing,
            )
            self._runner.train(self.model.training)  # a new nn.Module is in training mode: keep the model's
        return self._runner

    def gradient_statistics(self):
        """Per-weight gradient statistics over the calibration batches (all-reduced across processes)."""
        if self._statistics is None:
            from ..distributed import all_reduce_statistics, distributed_world, shard_batches
            from .statistics import GradientStatistics

            self.check_memory()
            runner = self.calibration_runner()
            rank, world_size = distributed_world()
            start = time.perf_counter()
            statistics = GradientStatistics(self.group_sets, output_fisher=self.config.reselects_by_output_fisher)
            statistics.collect(runner, shard_batches(self.batches, rank, world_size), self.progress)
            all_reduce_statistics(statistics)
            self.seconds["gradients"] = time.perf_counter() - start
            self._statistics = statistics
        return self._statistics

    def output_fisher(self) -> dict:
        """The output Fisher of every set's input-sliced projection (`GradientStatistics.output_fisher`), from the
        gradient pass: the importance's own if it ran one, else a pass for it alone."""
        return self.gradient_statistics().output_fisher

    def check_memory(self) -> None:
        """Show the memory estimate of a gradient pass and refuse one that cannot fit (`config.check_memory`)."""
        from transformers.utils import logging

        from ..groups import decoder_layers
        from ..memory import check_calibration_memory, estimate_calibration_memory

        config = self.config
        if not config.check_memory:
            return
        decoder_weights = sum(gs.num_groups * gs.params_per_group for gs in self.group_sets)
        _, layers = decoder_layers(self.model, self.spec)
        layer_weights = sum(p.numel() for p in layers.parameters() if p.ndim == 2)
        estimate = estimate_calibration_memory(
            self.model,
            self.spec,
            config.calibration_batch_size,
            self.batches[0].shape[1],
            config.calibration_micro_batch_size,
            config.autocast_dtype,
            config.gradient_checkpointing,
            trainable_fraction=min(decoder_weights / max(layer_weights, 1), 1.0),
            output_fisher_sets=len(self.group_sets) if config.reselects_by_output_fisher else 0,
        )
        if self.progress:  # once: on the console when progress is shown, else in the log
            print(estimate.summary(), flush=True)
        else:
            logging.get_logger(__name__).info(estimate.summary())
        check_calibration_memory(estimate)

    @property
    def progress(self) -> bool:
        """Whether this process shows progress bars (the main one, when asked)."""
        return self.show_progress and self.is_main_process
