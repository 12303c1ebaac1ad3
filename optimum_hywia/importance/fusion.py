"""Fusion of fine- and coarse-grained importance by attention, learned end to end (see docs/method.md).

For every slot (one layer and group kind) each estimate (the fine-grained ones, then the coarse one) is made
relative, `r_e = s_e / mean_slot(s_e)`, and the estimates are blended by attention weights `alpha = softmax(q_slot .
K_slot / sqrt(d))`, where `q_slot` is a learned query and the keys `K_slot,e = W phi_slot,e + b_e` come from
statistics `phi` of each estimate in that slot. The blend `R = sum_e alpha_e r_e` ranks groups inside a slot; for
the per-layer layout each estimate also brings its slot level `lambda_e`, its importance per parameter in that slot
(mean 1 over slots), and the density `D = sum_e alpha_e lambda_e r_e` makes slots comparable: with a one-hot blend
HyWIA ranks every group exactly as that estimate's importance per parameter does. The queries, `W` and `b` are
trained through soft masks `sigmoid((log D - tau) / (T * std))` on the groups' outputs, at the target sparsity, to
lower the calibration objective: by default the KL divergence from the dense model's next-token distributions
(`fusion_objective`); the model's weights stay frozen. The fused scores decide how many groups each slot keeps;
which ones is chosen afterwards with hard masks (`ranking.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.utils import logging

from ..allocation import PruningPlan
from ..groups import GroupSet, Key
from ..offload import execution_device
from .masking import group_masks
from .statistics import calibration_loss, check_finite

logger = logging.get_logger(__name__)

EPS = 1e-12
NUM_FEATURES = 6


def relative(scores: torch.Tensor) -> torch.Tensor:
    """Scores divided by their mean, so that every estimate has mean 1 inside its slot."""
    return scores / scores.mean().clamp_min(EPS)


def _rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    if len(a) < 2:
        return 1.0
    ranks_a, ranks_b = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ranks_a, ranks_b]))[0, 1].nan_to_num(1.0))


def slot_features(estimates: list[torch.Tensor], depth: float, kind: str) -> torch.Tensor:
    """Features `phi` of the estimates of one slot: shape `[len(estimates), NUM_FEATURES]`."""
    rows = []
    for i, estimate in enumerate(estimates):
        others = [_rank_correlation(estimate, other) for j, other in enumerate(estimates) if j != i]
        correlation = sum(others) / max(len(others), 1)
        log_scores = relative(estimate).clamp_min(EPS).log()
        std = log_scores.std() if len(log_scores) > 1 else torch.tensor(0.0)
        centred = log_scores - log_scores.mean()
        skew = (centred**3).mean() / std.clamp_min(EPS) ** 3 if len(log_scores) > 2 else torch.tensor(0.0)
        rows.append([float(std), float(skew), correlation, depth, float(kind == "attention"), float(kind == "mlp")])
    return torch.tensor(rows, dtype=torch.float32)


class AttentionFusion(nn.Module):
    """Attention over the estimates: one learned query per slot, keys from each estimate's features."""

    def __init__(self, features: torch.Tensor, hidden_size: int = 8, seed: int = 0):
        super().__init__()
        num_slots, num_estimators, num_features = features.shape
        mean = features.mean((0, 1), keepdim=True)
        std = features.std((0, 1), keepdim=True).nan_to_num(1.0).clamp_min(1e-6)
        self.register_buffer("features", (features - mean) / std)
        generator = torch.Generator().manual_seed(seed)
        self.key = nn.Linear(num_features, hidden_size)
        with torch.no_grad():
            self.key.weight.copy_(torch.randn(hidden_size, num_features, generator=generator) / math.sqrt(num_features))
            self.key.bias.zero_()
        self.estimator_embedding = nn.Parameter(torch.zeros(num_estimators, hidden_size))
        self.query = nn.Parameter(torch.zeros(num_slots, hidden_size))  # zero query: an even blend to start

    def forward(self) -> torch.Tensor:
        """Blend weights `alpha`, shape `[num_slots, num_estimators]`."""
        keys = self.key(self.features) + self.estimator_embedding
        logits = torch.einsum("sh,seh->se", self.query, keys) / math.sqrt(keys.shape[-1])
        return logits.softmax(-1)


@dataclass
class FusionResult:
    """Learned blend per slot, the fused scores, and the training history."""

    alpha: dict[Key, tuple[float, ...]]
    scores: dict[Key, torch.Tensor]
    losses: list[float] = field(default_factory=list)
    ranking: dict[str, str] = field(default_factory=dict)  # group kind: estimate ranking inside slots (ranking.py)
    ranking_losses: dict[str, dict[str, float]] = field(default_factory=dict)
    ranking_batches: dict[str, dict[str, int]] = field(default_factory=dict)
    # single estimates whose own selections the compensated choice weighs against HyWIA's (selection.py)
    alternatives: dict[str, dict[Key, torch.Tensor]] = field(default_factory=dict)


class HybridFusion:
    """Fuse the `fine` estimates and the `coarse` one of `group_sets` by `AttentionFusion`, trained end to end."""

    def __init__(
        self,
        group_sets: list[GroupSet],
        fine: Sequence[dict[Key, torch.Tensor]],
        coarse: dict[Key, torch.Tensor],
        plan: PruningPlan,
        num_layers: int,
        hidden_size: int = 8,
        seed: int = 0,
        fixed_alpha: float | None = None,
        objective: str = "distillation",
    ):
        if not fine:
            raise ValueError("HybridFusion needs at least one fine-grained estimate.")
        self.group_sets = group_sets
        self.objective = objective
        self.fixed_alpha = fixed_alpha
        self.num_fine = len(fine)
        self.plan = plan
        estimates = [*fine, coarse]
        self.relative = [torch.stack([relative(e[gs.key]) for e in estimates]).float() for gs in group_sets]
        # slot levels: each estimate's importance per parameter, scaled to mean 1 over slots (only ratios matter)
        levels = torch.tensor(
            [[float(e[gs.key].sum()) / (gs.num_groups * gs.params_per_group) for e in estimates] for gs in group_sets]
        )
        self.levels = levels / levels.mean(0, keepdim=True).clamp_min(EPS)
        features = torch.stack(
            [
                slot_features([e[gs.key] for e in estimates], gs.layer / max(num_layers - 1, 1), gs.kind)
                for gs in group_sets
            ]
        )
        self.module = AttentionFusion(features, hidden_size, seed)

    def alpha(self) -> torch.Tensor:
        """Blend weights `[num_slots, num_estimates]` (the fine estimates, then the coarse one): learned by
        attention, or the fixed ablation blend (`fixed_alpha` shared evenly by the fine estimates)."""
        if self.fixed_alpha is not None:
            fixed = torch.full((self.num_fine + 1,), self.fixed_alpha / self.num_fine)
            fixed[-1] = 1 - self.fixed_alpha
            return fixed.expand(len(self.group_sets), -1)
        return self.module()

    def scores(self) -> dict[Key, torch.Tensor]:
        """Fused scores (differentiable): the relative blend, with the blended slot level for the per-layer layout."""
        alpha = self.alpha()
        per_layer = self.plan.layout == "per_layer"
        fused = {}
        for i, group_set in enumerate(self.group_sets):
            weights = alpha[i] * self.levels[i] if per_layer else alpha[i]
            fused[group_set.key] = weights @ self.relative[i]
        return fused

    def soft_masks(self, scores: dict[Key, torch.Tensor], temperature: float) -> dict[Key, torch.Tensor]:
        """Masks in (0, 1) that keep, in expectation, what the hard selection at this plan would keep."""
        log_scores = {key: value.clamp_min(EPS).log() for key, value in scores.items()}
        masks = {}
        if self.plan.layout == "uniform":
            for group_set in self.group_sets:
                kept = self.plan.kept_groups[group_set.kind]
                if kept >= group_set.num_groups:
                    continue
                z = log_scores[group_set.key]
                ordered = z.detach().sort(descending=True).values
                tau = (ordered[kept - 1] + ordered[kept]) / 2
                masks[group_set.key] = torch.sigmoid((z - tau) / (temperature * z.detach().std().clamp_min(EPS)))
            return masks
        z_all = torch.cat([log_scores[gs.key].detach() for gs in self.group_sets])
        params = torch.cat([torch.full((gs.num_groups,), float(gs.params_per_group)) for gs in self.group_sets])
        order = z_all.argsort(descending=True)
        kept_params = params[order].cumsum(0)
        cut = int(torch.searchsorted(kept_params, kept_params[-1] - self.plan.remove_params).clamp(max=len(order) - 1))
        tau = z_all[order[cut]]
        scale = temperature * z_all.std().clamp_min(EPS)
        return {gs.key: torch.sigmoid((log_scores[gs.key] - tau) / scale) for gs in self.group_sets}

    def train(
        self,
        model: nn.Module,
        batches: list[torch.Tensor],
        steps: int,
        learning_rate: float,
        temperature: tuple[float, float],
        show_progress: bool = True,
    ) -> FusionResult:
        """Learn the blend end to end: minimise the calibration loss (`objective`) of the soft-masked model."""
        losses: list[float] = []
        if steps > 0 and self.fixed_alpha is None:
            optimizer = torch.optim.Adam(self.module.parameters(), lr=learning_rate)
            device = execution_device(model)
            previous = [(param, param.requires_grad) for param in model.parameters()]
            was_training = model.training
            model.eval()
            try:
                for param, _ in previous:
                    param.requires_grad_(False)
                progress = tqdm(range(steps), desc="HyWIA fusion training", disable=not show_progress)
                for step in progress:
                    t0, t1 = temperature
                    current = t0 * (t1 / t0) ** (step / max(steps - 1, 1))
                    batch = batches[step % len(batches)].to(device)
                    masks = self.soft_masks(self.scores(), current)
                    with group_masks(self.group_sets, masks):
                        loss = calibration_loss(model, batch, self.objective)
                    check_finite(loss, "fusion training loss")
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                    progress.set_postfix(loss=f"{losses[-1]:.3f}", T=f"{current:.3f}")
            finally:
                for param, requires_grad in previous:
                    param.requires_grad_(requires_grad)
                model.train(was_training)
        with torch.no_grad():
            alpha = self.alpha()
            scores = {key: value.detach().double() for key, value in self.scores().items()}
        blend = {gs.key: tuple(float(a) for a in alpha[i]) for i, gs in enumerate(self.group_sets)}
        return FusionResult(blend, scores, losses)
