"""DeepSight, Rieger et al., NDSS 2022 ("DeepSight: Mitigating Backdoor Attacks in Federated
Learning Through Deep Model Inspection").

1. Label each model: backdoor training data is homogeneous, so a poisoned model's
   output-layer update concentrates its energy on few labels. NEUPs (normalised
   update energies of the output neurons) give the threshold exceedings TE, the
   number of NEUPs above ``max(0.01, 1/P) * max NEUP``; models with
   ``TE <= median(TE) / 2`` are labelled suspicious.
2. Cluster the models three ways with HDBSCAN: by the cosine distance of their
   output-bias updates, by their NEUPs, and by their DDifs (division differences:
   mean ratio of local to global output probabilities on random inputs, one
   clustering per seed). The clusterings are merged into one co-membership
   distance and clustered again.
3. Reject every cluster in which the share of suspicious models reaches tau;
   a noise point stands alone and is rejected iff it is suspicious.
4. Clip the accepted updates to the median norm of all updates and average them.

HDBSCAN runs with ``min-cluster-size = 2`` and ``min_samples = 1``, flowerbed's choice
for rounds of ~10 clients, so that a few colluders can form a cluster of their own. The
public re-implementations leave the library's defaults (smallest cluster 5, min_samples
equal to it), which at 10 clients folds small groups into their neighbours or into noise;
``min-cluster-size = 5`` comes closer to them (min_samples stays 1). The merged co-membership distances take few distinct
values, so where HDBSCAN meets a tie the outcome can depend on client order (replies are
sorted by partition id, so a run is still reproducible).

DDifs need the model itself: pass ``root_data=ServerModelHooks(predict=..., input_shape=...)``.
Without ``predict``, DeepSight clusters on the bias cosine distances and NEUPs only (and logs so).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from logging import WARNING

import torch
from flwr.app import ArrayRecord
from flwr.common.logger import log
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..core.clustering import co_membership_distances, hdbscan_labels
from ..core.params import StrategyParams
from ..core.update_defence import Aggregation, UpdateDefence
from ..core.updates import ArrayLayout, UpdateBatch, cosine_distances, median_clipped_mean


class DeepSightParams(StrategyParams):
    """DeepSight (Rieger et al., 2022): tau = 1/3, 3 seeds of 20,000 random inputs for the DDifs."""

    tau: float = Field(1 / 3, gt=0.0, le=1.0, description="share of suspicious models that rejects a cluster")
    num_seeds: int = Field(3, alias="num-seeds", ge=1, description="random-input seeds for the DDifs")
    num_samples: int = Field(20_000, alias="num-samples", ge=1, description="random inputs per seed for the DDifs")
    output_layer: str = Field(
        "", alias="output-layer", description="name of the classification layer ('' = the last 2-D weight array)"
    )
    min_cluster_size: int = Field(
        2, alias="min-cluster-size", ge=2, description="HDBSCAN's smallest cluster (2 lets a few colluders form one)"
    )


def output_layer_slices(layout: ArrayLayout, name: str = "") -> tuple[slice, tuple[int, int], slice]:
    """Flat slices of the output layer's weight (with its (P, F) shape) and bias."""
    shapes = {key: (shape, segment) for key, shape, segment in layout.learned_segments()}
    if name:
        weight_key = f"{name}.weight"
    else:
        matrices = [key for key, (shape, _) in shapes.items() if len(shape) == 2]
        if not matrices:
            raise ValueError("strategy.deepsight.output-layer: the model has no 2-D weight array; name the layer")
        weight_key = matrices[-1]
    bias_key = weight_key.removesuffix("weight") + "bias"
    if weight_key not in shapes or len(shapes[weight_key][0]) != 2:
        raise ValueError(f"strategy.deepsight.output-layer: no 2-D array '{weight_key}' in the model")
    weight_shape = shapes[weight_key][0]
    if bias_key not in shapes or shapes[bias_key][0] != (weight_shape[0],):
        raise ValueError(f"strategy.deepsight.output-layer: no bias '{bias_key}' of shape ({weight_shape[0]},)")
    return shapes[weight_key][1], (weight_shape[0], weight_shape[1]), shapes[bias_key][1]


def threshold_exceedings(weight_updates: torch.Tensor, bias_updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NEUPs ``(clients, P)`` and threshold exceedings ``(clients,)`` of the output layer's updates."""
    energy = weight_updates.abs().sum(dim=2, dtype=torch.float64) + bias_updates.abs().double()
    squared = energy.square()
    neups = squared / squared.sum(dim=1, keepdim=True).clamp(min=1e-300)
    num_labels = neups.shape[1]
    threshold = max(0.01, 1.0 / num_labels) * neups.max(dim=1, keepdim=True).values
    return neups, (neups > threshold).sum(dim=1)


def suspicious_labels(exceedings: torch.Tensor) -> torch.Tensor:
    """Models whose threshold exceedings are at most half the median are suspicious."""
    return exceedings.double() <= torch.quantile(exceedings.double(), 0.5) / 2.0


def division_differences(
    predict: Callable[[ArrayRecord, torch.Tensor], torch.Tensor],
    global_arrays: ArrayRecord,
    local_arrays: Sequence[ArrayRecord],
    inputs: torch.Tensor,
) -> torch.Tensor:
    """DDifs ``(clients, P)``: mean over ``inputs`` of local / global output probability per label."""
    reference = predict(global_arrays, inputs).double().clamp(min=1e-30)
    return torch.stack([(predict(arrays, inputs).double() / reference).mean(dim=0) for arrays in local_arrays])


def deepsight_filter(
    bias_updates: torch.Tensor,
    neups: torch.Tensor,
    suspicious: torch.Tensor,
    ddifs: Sequence[torch.Tensor] = (),
    *,
    tau: float = 1 / 3,
    min_cluster_size: int = 2,
) -> torch.Tensor:
    """DeepSight's ensemble clustering and cluster labelling; returns the accepted mask."""
    bias_distances = cosine_distances(bias_updates)
    parts = [
        co_membership_distances(hdbscan_labels(bias_distances, min_cluster_size=min_cluster_size, precomputed=True)),
        co_membership_distances(hdbscan_labels(neups, min_cluster_size=min_cluster_size, precomputed=False)),
    ]
    if ddifs:
        parts.append(
            torch.stack(
                [
                    co_membership_distances(hdbscan_labels(d, min_cluster_size=min_cluster_size, precomputed=False))
                    for d in ddifs
                ]
            ).mean(dim=0)
        )
    labels = hdbscan_labels(torch.stack(parts).mean(dim=0), min_cluster_size=min_cluster_size, precomputed=True)
    # A noise point is its own cluster.
    num_clients = labels.shape[0]
    labels = torch.where(labels >= 0, labels, labels.max() + 1 + torch.arange(num_clients))
    clusters, membership = torch.unique(labels, return_inverse=True)
    suspicious_share = torch.zeros(len(clusters), dtype=torch.float64).index_add_(0, membership, suspicious.double())
    suspicious_share /= torch.bincount(membership, minlength=len(clusters)).double()
    return suspicious_share[membership] < tau


@STRATEGIES.register("deepsight")
class DeepSight(UpdateDefence):
    """DeepSight (Rieger et al., 2022): flags the clients in clusters dominated by suspicious models."""

    name = "deepsight"
    Params = DeepSightParams

    def init_state(self) -> None:
        super().init_state()
        hooks = self.root_data
        self._predict = None if hooks is None or hooks.input_shape is None else hooks.predict
        if self._predict is None:
            log(WARNING, "deepsight: no ServerModelHooks.predict and input_shape; clustering without DDifs")

    def aggregate_updates(self, batch: UpdateBatch, server_round: int) -> Aggregation:
        params: DeepSightParams = self.params
        weight_slice, (labels, features), bias_slice = output_layer_slices(batch.layout, params.output_layer)
        weight_updates = batch.updates[:, weight_slice].reshape(batch.num_clients, labels, features)
        bias_updates = batch.updates[:, bias_slice]
        neups, exceedings = threshold_exceedings(weight_updates, bias_updates)
        ddifs = self._division_differences(batch, server_round)
        accepted = deepsight_filter(
            bias_updates,
            neups,
            suspicious_labels(exceedings),
            ddifs,
            tau=params.tau,
            min_cluster_size=params.min_cluster_size,
        )
        if not bool(accepted.any()):
            return Aggregation(torch.zeros(batch.layout.num_learned), accepted)
        update, _ = median_clipped_mean(batch.learned, accepted, batch.learned_norms)
        return Aggregation(update, accepted)

    def _division_differences(self, batch: UpdateBatch, server_round: int) -> list[torch.Tensor]:
        """One DDif matrix per seed, or none when the ServerApp lent no ``predict``."""
        if self._predict is None:
            return []
        assert self.root_data is not None and self.root_data.input_shape is not None and self._global_arrays is not None
        ddifs = []
        for seed_index in range(self.params.num_seeds):
            generator = self.round_generator(server_round, seed_index)
            inputs = torch.rand((self.params.num_samples, *self.root_data.input_shape), generator=generator)
            ddifs.append(division_differences(self._predict, self._global_arrays, batch.records, inputs))
        return ddifs
