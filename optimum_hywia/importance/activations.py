"""Activation statistics and the Wanda-sp baseline (`importance="wanda_sp"`), forward passes only.

Wanda-sp is the structured version of Wanda defined by FLAP (An et al., "Fluctuation-based Adaptive Structured
Pruning for Large Language Models", AAAI 2024). A forward pre-hook on every projection that a group slices along its
*input* dimension (`o_proj` for a KV-head group, `down_proj` for an MLP channel: `spec.dim == "in"`) adds up, over
every calibration token, the squared input activation of each input feature `j`:

    ||X_j||^2 = sum over tokens of x_j^2

The score of weight `(i, j)` of that projection is `|W_ij| * ||X_j||_2`, and a group's score is the sum over its
columns `j` (all the `o_proj` columns of a KV-head group's query heads; an MLP channel's `down_proj` column):

    S_g = sum_{j in g} ||X_j||_2 * sum_i |W_ij|

Only the input-sliced projections are scored, as in Wanda-sp. Calibration windows are full token windows with no
padding, so every token counts. Unlike FLAP's layer-by-layer reference code, every activation is that of the dense
model, collected in one pass (docs/method.md, section 3).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from ..groups import GroupSet
from ..offload import execution_device, module_tensor
from .estimators import group_sum
from .statistics import _encoder, check_finite


class ActivationStatistics:
    """Sum of squared input activations per input feature of every input-sliced projection of `group_sets`.

    `squared_norms[key][index]` is `||X_j||^2` for every column `j` of projection `index` of the group set `key`
    (only projections with `spec.dim == "in"` have an entry).
    """

    def __init__(self, group_sets: list[GroupSet]):
        self.group_sets = group_sets
        self.num_batches = 0
        self.num_tokens = 0
        self.squared_norms: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
        self.sums: dict[tuple[int, str], dict[int, torch.Tensor]] = {}  # sum over tokens of x_j (FLAP's mean)
        for group_set in group_sets:
            norms = {
                index: torch.zeros(projection.size, dtype=torch.float64)
                for index, projection in enumerate(group_set.projections)
                if projection.spec.dim == "in"
            }
            if not norms:
                raise ValueError(
                    f"Layer {group_set.layer} ({group_set.kind}) has no projection sliced along its input dimension: "
                    "wanda_sp scores the input columns of o_proj/down_proj-like projections."
                )
            self.squared_norms[group_set.key] = norms
            self.sums[group_set.key] = {index: torch.zeros_like(norm) for index, norm in norms.items()}

    def _hook(self, accumulator: torch.Tensor, sums: torch.Tensor, calls: list[int]):
        def record(module, args):
            inputs = args[0].detach().float().reshape(-1, args[0].shape[-1])
            accumulator.add_(inputs.square().sum(0).double().cpu())
            sums.add_(inputs.sum(0).double().cpu())
            calls[0] += 1

        return record

    @torch.no_grad()
    def collect(
        self,
        model: torch.nn.Module,
        batches: Iterable[torch.Tensor],
        show_progress: bool = True,
        micro_batch_size: int | None = None,
        autocast_dtype: str | None = None,
    ) -> None:
        """Run forward passes of `model` (no gradients) over `batches` of token ids and fold the input activations.

        `micro_batch_size` rows are run at a time (`None`: the whole batch); `autocast_dtype` (`"bfloat16"`) runs the
        forward passes under autocast. Encoders see every token (a full attention mask).
        """
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {micro_batch_size}.")
        handles = []
        calls: dict[str, list[int]] = {}
        try:
            for group_set in self.group_sets:
                for index, accumulator in self.squared_norms[group_set.key].items():
                    projection = group_set.projections[index]
                    counter = calls.setdefault(projection.name, [0])
                    sums = self.sums[group_set.key][index]
                    handles.append(projection.module.register_forward_pre_hook(self._hook(accumulator, sums, counter)))
            device = execution_device(model)
            encoder = _encoder(model)
            dtype = getattr(torch, autocast_dtype) if autocast_dtype else None
            batches = list(batches)
            for batch in tqdm(batches, desc="HyWIA calibration (activations)", disable=not show_progress):
                batch = batch.to(device)
                step = micro_batch_size or batch.shape[0]
                with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
                    for chunk in torch.split(batch, step):
                        if encoder is not None:
                            encoder(input_ids=chunk, attention_mask=torch.ones_like(chunk))
                        else:
                            model(input_ids=chunk, use_cache=False)
                self.num_batches += 1
                self.num_tokens += batch.numel()
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name, counter in calls.items() if counter[0] == 0 and self.num_batches]
        if missing:
            raise RuntimeError(
                f"No activation reached {missing[0]} during calibration (its forward was never called as a module): "
                "wanda_sp cannot score this model."
            )
        for key, per_projection in self.squared_norms.items():
            for norms in per_projection.values():
                check_finite(norms, f"activation statistics of layer {key[0]} ({key[1]})")


def activation_scores(statistics: ActivationStatistics) -> dict[tuple[int, str], torch.Tensor]:
    """Wanda-sp scores (float64) of every group set: `sum_{j in g} ||X_j||_2 * sum_i |W_ij|` over input columns."""
    if statistics.num_batches == 0:
        raise ValueError("No calibration batch was run: wanda_sp needs calibration data.")
    scores = {}
    for group_set in statistics.group_sets:
        norms = statistics.squared_norms[group_set.key]
        values = []
        for index, projection in enumerate(group_set.projections):
            if index not in norms:  # output-sliced rows are not scored
                values.append(torch.zeros(projection.size, dtype=torch.float64))
                continue
            weight = module_tensor(projection.module, "weight").detach()
            magnitude = weight.float().abs().sum(1 - projection.weight_axis).double().cpu()  # Conv1D: [in, out]
            values.append(magnitude * norms[index].sqrt())
        scores[group_set.key] = group_sum(group_set, values)
    return scores


def fluctuation_scores(statistics: ActivationStatistics) -> dict[tuple[int, str], torch.Tensor]:
    """FLAP's fluctuation metric, standardised per layer and module kind (float64).

    Per input column `j` of an input-sliced projection: `Var(X_j) · ‖W[:, j]‖²` (the variance of the input feature
    over the calibration tokens: how much the output would move if the column were replaced by its mean, which the
    bias compensation adds back); a group sums its columns; the scores of one set are then standardised,
    `(S - mean) / std`, so that the `per_layer` layout ranks every layer and kind on one scale (FLAP's adaptive
    structure search).
    """
    if statistics.num_batches == 0:
        raise ValueError("No calibration batch was run: flap needs calibration data.")
    scores = {}
    for group_set in statistics.group_sets:
        key = group_set.key
        values = []
        for index, projection in enumerate(group_set.projections):
            if index not in statistics.squared_norms[key]:
                values.append(torch.zeros(projection.size, dtype=torch.float64))
                continue
            tokens = max(statistics.num_tokens, 1)
            mean = statistics.sums[key][index] / tokens
            variance = (statistics.squared_norms[key][index] / tokens - mean.square()).clamp_min(0)
            weight = module_tensor(projection.module, "weight").detach()
            column_norms = weight.float().square().sum(1 - projection.weight_axis).double().cpu()
            values.append(variance * column_norms)
        raw = group_sum(group_set, values)
        spread = raw.std() if raw.numel() > 1 else raw.new_tensor(0.0)
        scores[key] = (raw - raw.mean()) / spread if spread > 0 else torch.zeros_like(raw)
    return scores
