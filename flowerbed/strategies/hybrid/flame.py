"""FLAME, Nguyen et al., USENIX Security 2022 ("FLAME: Taming Backdoors in Federated Learning").

1. Cluster the updates by pairwise cosine distance with HDBSCAN
   (``min_cluster_size = n/2 + 1``); clients outside the majority cluster are dropped.
2. Clip the accepted updates to ``S = median`` of all update norms.
3. Average the clipped updates and add Gaussian noise of std ``lambda * S``
   (lambda = 0.001 for image classification in the paper).

The paper's text measures cosine distances between local models; like common
re-implementations we measure them between updates (local - global), which
differ only by the shared global model and separate clients far better.
"""

from __future__ import annotations

import torch
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..clustering import majority_cluster
from ..params import StrategyParams
from ..update_defence import Aggregation, UpdateDefence
from ..updates import UpdateBatch, cosine_similarity_matrix, gram_matrix, median_clipped_mean


class FlameParams(StrategyParams):
    """FLAME's noise level (Nguyen et al., 2022: lambda = 0.001 for image classification)."""

    noise_lambda: float = Field(
        0.001, alias="noise-lambda", ge=0.0, description="lambda; noise std = lambda * median update norm"
    )


def flame_aggregate(
    updates: torch.Tensor, *, noise_lambda: float, generator: torch.Generator | None = None
) -> Aggregation:
    """FLAME's filter, adaptive clipping and noise on the ``(clients x parameters)`` updates."""
    gram = gram_matrix(updates)
    accepted = majority_cluster(1.0 - cosine_similarity_matrix(updates, gram))
    if not bool(accepted.any()):
        return Aggregation(torch.zeros(updates.shape[1], dtype=updates.dtype), accepted)
    update, bound = median_clipped_mean(updates, accepted, gram.diagonal().clamp(min=0.0).sqrt())
    if noise_lambda > 0:
        update += noise_lambda * bound * torch.randn(update.shape, generator=generator, dtype=update.dtype)
    return Aggregation(update, accepted)


@STRATEGIES.register("flame")
class Flame(UpdateDefence):
    """FLAME (Nguyen et al., 2022): flags the clients outside the majority cosine cluster."""

    name = "flame"
    Params = FlameParams

    def aggregate_updates(self, batch: UpdateBatch, server_round: int) -> Aggregation:
        return flame_aggregate(
            batch.learned, noise_lambda=self.params.noise_lambda, generator=self.round_generator(server_round)
        )
