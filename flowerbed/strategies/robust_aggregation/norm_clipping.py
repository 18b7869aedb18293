"""Norm clipping with optional weak differential privacy, Sun et al., 2019 ("Can You Really
Backdoor Federated Learning?", arXiv 1911.07963): clip every update to L2 norm M, average,
and optionally add Gaussian noise of standard deviation sigma to every coordinate."""

from __future__ import annotations

import torch
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..core.params import StrategyParams
from ..core.update_defence import Aggregation, UpdateDefence
from ..core.updates import UpdateBatch, clip_factors


class NormClippingParams(StrategyParams):
    """Sun et al. (2019) study norm bounds M in {3, 5, 10}; their weak DP uses sigma = 0.025."""

    norm_bound: float = Field(3.0, alias="norm-bound", gt=0.0, description="M, the L2 bound of every client update")
    noise_std: float = Field(
        0.0, alias="noise-std", ge=0.0, description="sigma of the weak-DP Gaussian noise per coordinate (0 = off)"
    )


def norm_clipping_aggregate(
    updates: torch.Tensor,
    weights: torch.Tensor,
    *,
    norm_bound: float,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
    norms: torch.Tensor | None = None,
) -> Aggregation:
    """Weighted mean of the updates clipped to ``norm_bound``, plus N(0, noise_std^2) noise.

    ``norms``: the updates' L2 norms, if already known (else computed here).
    """
    norms = torch.linalg.vector_norm(updates, dim=1) if norms is None else norms
    factors = clip_factors(norms, norm_bound)
    coefficients = weights * factors
    update = coefficients.to(updates.dtype) @ updates
    if noise_std > 0:
        update += noise_std * torch.randn(update.shape, generator=generator, dtype=update.dtype)
    # Clipping down-weights the long updates: each client's coefficient is its reported weight.
    return Aggregation(update, torch.ones(updates.shape[0], dtype=torch.bool), coefficients)


@STRATEGIES.register("norm-clipping")
class NormClipping(UpdateDefence):
    """Sun et al. (2019): bound every update's norm, then FedAvg (+ weak DP noise); flags nobody, reports each client's clipped weight."""

    name = "norm-clipping"
    Params = NormClippingParams
    flags_clients = False  # clips, never leaves a client out: its weights are reported instead

    def aggregate_updates(self, batch: UpdateBatch, server_round: int) -> Aggregation:
        return norm_clipping_aggregate(
            batch.learned,
            batch.example_weights,
            norm_bound=self.params.norm_bound,
            noise_std=self.params.noise_std,
            generator=self.round_generator(server_round),
            norms=batch.learned_norms,
        )
