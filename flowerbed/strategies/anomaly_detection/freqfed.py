"""FreqFed, Fereidooni et al., NDSS 2024 ("FreqFed: A Frequency Analysis-Based Approach for
Mitigating Poisoning Attacks in Federated Learning", arXiv 2312.04432).

1. Move every local model into the frequency domain: a 2-D DCT-II of each layer's
   weights (reshaped to ``(outputs, rest)``; 1-D arrays as one row).
2. Keep the low-frequency coefficients, where poisoned and benign updates differ
   most: the top-left triangle ``u/P + v/Q < cutoff`` of each layer's DCT matrix.
3. Cluster the clients' low-frequency vectors by cosine distance with HDBSCAN
   (``min_cluster_size = n/2 + 1``) and keep the majority cluster.
4. FedAvg the kept clients' updates.

Like the paper, step 3 compares the local models' spectra (``compare = "models"``): the
DCT is linear, so a model's coefficients are the global model's plus its update's, and the
cosine distances come from the updates' coefficients and the global model's
(:func:`~flowerbed.strategies.core.updates.cosine_distances`). ``compare = "updates"`` clusters the updates' spectra
alone, which keeps colluders aiming at one target together with the benign majority (see
FLAME's docstring). Two choices here were not checked against the paper's full text (not
available offline): every layer with learned weights is transformed (some
re-implementations take the output layer only, with a 1-D DCT), and the band is the strict
triangle ``u/P + v/Q < cutoff``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.fft
import torch
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..core.clustering import majority_cluster
from ..core.params import StrategyParams
from ..core.update_defence import Aggregation, UpdateDefence
from ..core.updates import ArrayLayout, UpdateBatch, cosine_distances


class FreqFedParams(StrategyParams):
    """FreqFed's low-frequency band (Fereidooni et al., 2024: the top-left half-triangle of the DCT)
    and what it clusters."""

    compare: Literal["models", "updates"] = Field(
        "models", description="cluster the spectra of the clients' local models (the paper) or of their updates"
    )
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
    updates: torch.Tensor,
    weights: torch.Tensor,
    layout: ArrayLayout,
    *,
    cutoff: float = 0.5,
    global_model: torch.Tensor | None = None,
) -> Aggregation:
    """FreqFed's majority cluster in the low-frequency domain, then the weighted mean of its updates.

    With ``global_model`` (the flat learned weights the updates are taken from) the clusters are
    of the local models' spectra; without it, of the updates'.
    """
    features = low_frequency_features(updates, layout, cutoff)
    global_features = None
    if global_model is not None:
        global_features = low_frequency_features(global_model.unsqueeze(0), layout, cutoff)[0]
    accepted = majority_cluster(cosine_distances(features, global_features))
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
        models = self.params.compare == "models"
        return freqfed_aggregate(
            batch.learned,
            batch.example_weights,
            batch.layout,
            cutoff=self.params.low_frequency_cutoff,
            global_model=batch.learned_global if models else None,
        )
