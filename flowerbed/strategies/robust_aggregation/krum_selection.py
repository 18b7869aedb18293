"""Flower's Krum / Multi-Krum selection (Blanchard et al., NeurIPS 2017) with one Gram matrix, plus a
record of whom the selection left out.

Flower's ``select_multikrum`` flattens every reply into one ``(clients x
parameters)`` matrix (float64 as soon as the model has an integer buffer: 9 GB
for 100 ResNet-18s) and takes ``|x|^2 + |y|^2 - 2 x.y`` from its Gram matrix.
:func:`squared_distances` computes the same distances block by block from the
replies' arrays: every model is taken minus the first one (distances do not
change; the cancellation in the formula shrinks to the spread of the models),
and the float32 Gram matrix of each cache-sized block of coordinates (BLAS
``syrk``: one triangle) is accumulated in float64. :func:`select_multikrum`
then applies Flower's scoring and ordering unchanged, and the selected replies
are averaged with Flower's arithmetic (:func:`weighted_average`).

One change to Flower's rule: only the learned weights enter the distances, as in
every flowerbed defence's geometry (Blanchard et al. define Krum on the gradients,
i.e. the parameters); BatchNorm's running statistics and integer counters are left
out. Flower counts them. The running statistics move more than the weights in a
benign round of the ``cnn`` (56% of the squared update norm), and the counters
grow by the number of local steps: from clients that send their whole
``state_dict`` in the bench federation (``cnn``, four BatchNorm layers, 6 to 28
local steps a round) two honest clients' counters would differ by up to 22 per
layer, a squared distance of up to ~1,900 against ~2 for their weights: Krum would rank clients by how much data
they have, and catch an attacker by its extra poison epochs (a counter any
attacker can reset) rather than by what its update does. (flowerbed's own
clients send the counters back unchanged, so its runs never hit this.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from scipy.linalg import blas

from flowerbed.platform.arrays import is_learned

from .coordinatewise import all_float32, client_columns, flat_views, reply_arrays, weighted_average


def squared_distances(records: Sequence[ArrayRecord], keys: Iterable[str]) -> np.ndarray:
    """Squared Euclidean distances between the models' learned weights (statistics and counters left out), float64 ``(n, n)``."""
    num_clients = len(records)
    upper = np.zeros((num_clients, num_clients))  # upper triangle of the Gram matrix of the models minus model 0
    for key in keys:
        views, _ = flat_views(records, key)
        if not is_learned(key, views[0].dtype):
            continue
        if all_float32(views):
            for _, columns in client_columns(views, minus=views[0]):  # (coordinates, clients)
                upper += blas.ssyrk(1.0, columns.T)  # columns.T is Fortran-ordered: no copy
        else:
            stacked = np.stack(views).astype(np.float64)
            stacked -= stacked[0]
            upper += np.triu(stacked @ stacked.T)
    gram = upper + np.triu(upper, 1).T
    norms = gram.diagonal()
    return norms[:, None] + norms[None, :] - 2.0 * gram


def select_multikrum(contents: list[RecordDict], num_malicious_nodes: int, num_nodes_to_select: int) -> list[RecordDict]:
    """Flower's ``select_multikrum`` (same signature, scores, order and tie-breaking) on :func:`squared_distances`.

    Score of client i: the sum of its distances to its ``max(1, n - f - 2)``
    nearest other clients (the row's smallest entry, its own zero distance,
    skipped as in Flower); the ``num_nodes_to_select`` lowest scores win.
    """
    records, keys = reply_arrays(contents)
    distance_matrix = squared_distances(records, keys)
    num_closest = max(1, len(records) - num_malicious_nodes - 2)
    closest_indices = [np.argsort(distance)[1 : num_closest + 1].tolist() for distance in distance_matrix]
    scores = [np.sum(distance_matrix[i, closest_indices[i]]) for i in range(len(distance_matrix))]
    best_indices = np.argsort(scores)[:num_nodes_to_select]
    return [contents[i] for i in best_indices]


class ReportsKrumSelection:
    """Mixin for subclasses of Flower's MultiKrum (and so Krum): its aggregation, computed faster."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's MultiKrum aggregation; clients Krum did not select are flagged."""
        valid_replies, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid_replies:
            self.clear_detection()
            return None, None
        contents = [reply.content for reply in valid_replies]
        selected = select_multikrum(
            contents,
            num_malicious_nodes=self.num_malicious_nodes,
            num_nodes_to_select=self.num_nodes_to_select,
        )
        self.record_selection(contents, selected)
        arrays = weighted_average(selected, self.weighted_by_key)
        metrics = self.train_metrics_aggr_fn(selected, self.weighted_by_key)
        return arrays, metrics
