"""FreqFed, Fereidooni et al., NDSS 2024 ("FreqFed: A Frequency Analysis-Based Approach for
Mitigating Poisoning Attacks in Federated Learning", arXiv 2312.04432).

1. Move every update into the frequency domain: a 2-D DCT-II of each layer's
   weights (reshaped to ``(outputs, rest)``; 1-D arrays as one row).
2. Keep the low-frequency coefficients, where poisoned and benign updates differ
   most: the top-left triangle ``u/P + v/Q < cutoff`` of each layer's DCT matrix.
3. Cluster the clients' low-frequency vectors by cosine distance with HDBSCAN
   (``min_cluster_size = n/2 + 1``) and keep the majority cluster.
4. FedAvg the kept clients' updates.

The paper transforms the local models' weights; this takes the DCT of the updates (local
model minus the global model, learned weights only), as FLAME's clustering here does: the
DCT is linear, so the two differ by the global model's own spectrum, which every client
shares (between whole models every cosine distance is close to 0 and differs only through
the updates; between updates it measures the updates alone).
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import torch
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..clustering import majority_cluster
from ..params import StrategyParams
from ..update_defence import Aggregation, UpdateDefence
from ..updates import ArrayLayout, UpdateBatch, cosine_similarity_matrix


class FreqFedParams(StrategyParams):
    """FreqFed's low-frequency band (Fereidooni et al., 2024: the top-left half-triangle of the DCT)."""

    low_frequency_cutoff: float = Field(
        0.5,
        alias="low-frequency-cutoff",
        gt=0.0,
        le=2.0,
        description="keep DCT coefficients (u, v) of a P x Q layer with u/P + v/Q < cutoff",
    )


def low_frequency_mask(rows: int, columns: int, cutoff: float) -> np.ndarray:
    """Boolean ``(rows, columns)`` mask of the coefficients with ``u/rows + v/columns < cutoff`` (DC always kept)."""
    mask = (np.arange(rows)[:, None] / rows + np.arange(columns)[None, :] / columns) < cutoff
    mask[0, 0] = True
    return mask


def low_frequency_features(updates: torch.Tensor, layout: ArrayLayout, cutoff: float = 0.5) -> torch.Tensor:
    """Every client's low-frequency DCT coefficients, all layers concatenated: ``(clients, features)``."""
    num_clients = updates.shape[0]
    features = []
    for _, shape, segment in layout.learned_segments():
        rows = shape[0] if len(shape) >= 2 else 1
        layer = updates[:, segment].reshape(num_clients, rows, -1).numpy()
        coefficients = scipy.fft.dctn(layer, type=2, norm="ortho", axes=(1, 2), workers=torch.get_num_threads())
        features.append(torch.from_numpy(coefficients[:, low_frequency_mask(rows, layer.shape[2], cutoff)]))
    return torch.cat(features, dim=1)


def freqfed_aggregate(
    updates: torch.Tensor, weights: torch.Tensor, layout: ArrayLayout, *, cutoff: float = 0.5
) -> Aggregation:
    """FreqFed's majority cluster in the low-frequency domain, then the weighted mean of its updates."""
    features = low_frequency_features(updates, layout, cutoff)
    accepted = majority_cluster((1.0 - cosine_similarity_matrix(features)).clamp(min=0.0))
    if not bool(accepted.any()):
        return Aggregation(torch.zeros(updates.shape[1], dtype=updates.dtype), accepted)
    kept = weights.double() * accepted
    return Aggregation((kept / kept.sum()).to(updates.dtype) @ updates, accepted)


@STRATEGIES.register("freqfed")
class FreqFed(UpdateDefence):
    """FreqFed (Fereidooni et al., 2024): flags the clients outside the low-frequency majority cluster."""

    name = "freqfed"
    Params = FreqFedParams

    def aggregate_updates(self, batch: UpdateBatch, server_round: int) -> Aggregation:
        return freqfed_aggregate(
            batch.learned, batch.example_weights, batch.layout, cutoff=self.params.low_frequency_cutoff
        )
