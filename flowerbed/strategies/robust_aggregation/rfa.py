"""Robust federated aggregation (RFA), Pillutla et al., IEEE TSP 2022 ("Robust Aggregation
for Federated Learning", arXiv 1912.13445): the example-weighted geometric median of the
client updates, computed with the smoothed Weiszfeld algorithm.

Weiszfeld step: ``beta_i = alpha_i / max(nu, |v - u_i|)``, ``v = sum beta_i u_i / sum beta_i``,
from ``v`` = the weighted mean, until the objective ``sum alpha_i |v - u_i|`` improves by
less than ``tolerance`` (relative) or ``max-iterations`` is reached. No client is
excluded; ``last_weights`` are the final Weiszfeld weights.
"""

from __future__ import annotations

import torch
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..core.params import StrategyParams
from ..core.update_defence import Aggregation, UpdateDefence
from ..core.updates import UpdateBatch, distances_to


class RfaParams(StrategyParams):
    """Smoothed Weiszfeld settings of Pillutla et al. (2022): a few iterations, a small nu (the
    authors' ``geometric_median_update`` uses eps = 1e-5, maxiter = 4, ftol = 1e-6; nu only
    matters when an update lies within nu of the estimate)."""

    max_iterations: int = Field(4, alias="max-iterations", ge=1, description="Weiszfeld iterations at most")
    smoothing: float = Field(1e-6, gt=0.0, description="nu, the smallest distance a weight may divide by")
    tolerance: float = Field(1e-6, ge=0.0, description="stop when the objective improves by less than this (relative)")


def geometric_median(
    points: torch.Tensor,
    weights: torch.Tensor,
    *,
    max_iterations: int = 4,
    smoothing: float = 1e-6,
    tolerance: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed Weiszfeld: the weighted geometric median of the rows and the final (normalised) row weights."""
    alphas = (weights / weights.sum()).double()
    median = alphas.to(points.dtype) @ points
    distances = distances_to(points, median)
    objective = float(alphas @ distances)
    betas = alphas
    for _ in range(max_iterations):
        betas = alphas / distances.clamp(min=smoothing)
        betas = betas / betas.sum()
        median = betas.to(points.dtype) @ points
        distances = distances_to(points, median)
        previous, objective = objective, float(alphas @ distances)
        if abs(previous - objective) <= tolerance * max(objective, torch.finfo(torch.float64).tiny):
            break
    return median, betas


@STRATEGIES.register("rfa")
class Rfa(UpdateDefence):
    """RFA (Pillutla et al., 2022): geometric median of the updates; flags nobody."""

    name = "rfa"
    Params = RfaParams
    flags_clients = False  # down-weights (its Weiszfeld weights are reported), never leaves a client out

    def aggregate_updates(self, batch: UpdateBatch, server_round: int) -> Aggregation:
        median, betas = geometric_median(
            batch.learned,
            batch.num_examples,
            max_iterations=self.params.max_iterations,
            smoothing=self.params.smoothing,
            tolerance=self.params.tolerance,
        )
        return Aggregation(median, torch.ones(batch.num_clients, dtype=torch.bool), betas)
