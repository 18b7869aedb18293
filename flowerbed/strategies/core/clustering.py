"""HDBSCAN clustering of client updates (Campello et al., 2013), shared by FLAME, FreqFed and DeepSight.

Uses scikit-learn's HDBSCAN (it labels points exactly like the ``hdbscan`` package).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import HDBSCAN


def hdbscan_labels(
    points: torch.Tensor, *, min_cluster_size: int, precomputed: bool, min_samples: int = 1
) -> torch.Tensor:
    """HDBSCAN cluster label of every row (``-1`` = noise).

    ``points`` is a distance matrix when ``precomputed``, else one feature row
    per client (Euclidean metric). A single cluster is allowed, so a round
    without attackers is one cluster rather than all noise. With fewer than
    three clients there is nothing to cluster: all share label 0.
    """
    num_clients = points.shape[0]
    if num_clients < 3:
        return torch.zeros(num_clients, dtype=torch.long)
    clusterer = HDBSCAN(
        metric="precomputed" if precomputed else "euclidean",
        min_cluster_size=max(2, min(min_cluster_size, num_clients)),
        min_samples=min_samples,
        allow_single_cluster=True,
        copy=True,
    )
    data = points.detach().cpu().double().numpy()
    if precomputed:
        data = np.ascontiguousarray((data + data.T) / 2.0)
        np.fill_diagonal(data, 0.0)
    return torch.from_numpy(clusterer.fit_predict(data).astype(np.int64))


def majority_cluster(distances: torch.Tensor) -> torch.Tensor:
    """Clients in the cluster that holds a majority (FLAME, Nguyen et al. 2022; FreqFed, Fereidooni et al. 2024).

    HDBSCAN on the precomputed ``distances`` with ``min_cluster_size = n // 2 + 1``
    and ``min_samples = 1``, so at most one cluster can form; clients outside
    it (noise) are rejected. Returns a bool mask (all False if no cluster formed).

    Note: HDBSCAN labels a lone cluster's members by whether they persist until
    the cluster dissolves (HDBSCAN's ``allow_single_cluster`` rule), so the honest
    client that is farthest from the rest is often labelled noise as well. This
    false positive is part of FLAME's and FreqFed's HDBSCAN configuration and is
    kept, so flowerbed's detection scores match theirs.
    """
    labels = hdbscan_labels(distances, min_cluster_size=distances.shape[0] // 2 + 1, precomputed=True)
    clustered = labels[labels >= 0]
    if clustered.numel() == 0:
        return torch.zeros(labels.shape[0], dtype=torch.bool)
    return labels == torch.mode(clustered).values


def co_membership_distances(labels: torch.Tensor) -> torch.Tensor:
    """0 between two clients in the same (non-noise) cluster, 1 otherwise (DeepSight's cluster distances)."""
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    return (~same).double()
