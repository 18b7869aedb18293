"""Central differential privacy with server-side fixed clipping (McMahan et al., ICLR 2018,
"Learning Differentially Private Recurrent Language Models", arXiv 1710.06963; Geyer et al.,
arXiv 1712.07557): clip every update to norm S, average with FedAvg, add Gaussian noise of
standard deviation z * S / n. Flower's DifferentialPrivacyServerSideFixedClipping around
FedAvg; the noise is drawn from a generator seeded by (run seed, round).

One change to Flower's wrapper: the clipping norm is measured on the learned weights
only, and only they are clipped and noised, as in every other flowerbed defence
(BatchNorm's running statistics take the clients' coordinate-wise median, integer
counters FedAvg's mean; Gaussian noise on a running variance can make it negative, and
an unclipped mean would let a boosted attacker's statistics through). Flower clips the difference of
every array, and BatchNorm's ``num_batches_tracked`` counters grow by the number of local steps: from a client that
sends its whole ``state_dict`` (Flower's example apps do) with the ``cnn`` (four
BatchNorm layers, 16 steps a round) Flower measures 32 for an update whose weights
moved by 0.63, so S = 1.5 would scale it by 0.05 — a learning-rate cut, not the
clipping the paper describes. (flowerbed's own clients send the counters back
unchanged, so its runs never hit this.)

As Flower's wrapper does without a privacy accountant, the clipped updates are averaged
weighted by example counts, while the noise std z * S / n assumes equal weights (McMahan
et al. cap each client's weight). A client with twice the average data therefore has
twice the sensitivity: this is a backdoor defence here, not a privacy guarantee."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp import strategy as flwr_strategy
from flwr.serverapp.strategy.dp_fixed_clipping import validate_replies
from flwr.supercore.differential_privacy import compute_stdv
from pydantic import Field

from flowerbed.platform.arrays import array_view, is_learned, update_norm
from flowerbed.platform.registry import STRATEGIES

from ..core.base import FlagsNobody, FlowerbedStrategy
from ..core.params import StrategyParams
from ..core.updates import coordinatewise_median


class DpFixedClippingParams(StrategyParams):
    """DP-FedAvg with fixed clipping (McMahan et al., 2018 use noise multiplier z = 1)."""

    noise_multiplier: float = Field(
        1.0, alias="noise-multiplier", ge=0.0, description="z; the noise std is z * clipping-norm / clients per round"
    )
    clipping_norm: float = Field(
        1.0, alias="clipping-norm", gt=0.0, description="S, the L2 bound of every client update (tune to the update norms)"
    )


def clip_learned_update(record: ArrayRecord, global_arrays: ArrayRecord, clipping_norm: float) -> ArrayRecord:
    """``record`` with its learned-weight update (record - global) scaled to L2 norm <= ``clipping_norm``.

    Running statistics and integer arrays (BatchNorm's) are kept as they are; so is a record already within the bound.
    The arithmetic is Flower's ``compute_clip_model_update``: global + (record - global) * factor, in the array's dtype.
    """
    norm = update_norm(record, global_arrays)
    if norm <= clipping_norm:
        return record
    factor = clipping_norm / norm
    clipped = {}
    for key, array in record.items():
        values = array_view(array)
        if not is_learned(key, values.dtype):
            clipped[key] = array
            continue
        base = array_view(global_arrays[key])
        update = np.subtract(values, base)
        update *= factor
        clipped[key] = Array(np.asarray(base + update))
    return ArrayRecord(clipped)


@STRATEGIES.register("dp-fixed-clipping")
class DpFixedClipping(FlagsNobody, FlowerbedStrategy, flwr_strategy.DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed-clipping DP wrapper around Flower's FedAvg; flags nobody."""

    name = "dp-fixed-clipping"
    Params = DpFixedClippingParams

    def init_flower(self, params: DpFixedClippingParams, flower_kwargs: dict[str, Any]) -> None:
        """Wrap a plain Flower FedAvg (the inner ``self.strategy``) that samples and averages the clients."""
        flwr_strategy.DifferentialPrivacyServerSideFixedClipping.__init__(
            self,
            flwr_strategy.FedAvg(**flower_kwargs),
            noise_multiplier=params.noise_multiplier,
            clipping_norm=params.clipping_norm,
            num_sampled_clients=self.num_clients_per_round,
        )

    def init_state(self) -> None:
        self._round = 0

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's (flwr 1.42) server-side fixed clipping: check, clip, FedAvg, noise (seeded by this round).

        Flower's own steps, except that each update is clipped by :func:`clip_learned_update`.
        """
        self._round = server_round
        replies_list = list(replies)
        event = self._pop_pending_event(server_round)
        if not validate_replies(replies_list, self.num_sampled_clients, strict=self.accountant is not None):
            return None, None
        self._validate_uniform_weights(replies_list)
        for reply in replies_list:
            for record_name, record in list(reply.content.array_records.items()):
                reply.content[record_name] = clip_learned_update(record, self.current_arrays, self.clipping_norm)
        aggregated_arrays, aggregated_metrics = self.strategy.aggregate_train(server_round, replies_list)
        if aggregated_arrays:
            aggregated_arrays = self._with_median_statistics(aggregated_arrays, replies_list)
            aggregated_arrays = self._add_noise_to_aggregated_arrays(aggregated_arrays)
            self._compose_release(event)
        return aggregated_arrays, aggregated_metrics

    def _with_median_statistics(self, aggregated_arrays: ArrayRecord, replies: list[Message]) -> ArrayRecord:
        """``aggregated_arrays`` with every floating-point array that is not a learned weight (BatchNorm's
        running statistics) replaced by the replies' coordinate-wise median."""
        records = [next(iter(reply.content.array_records.values())) for reply in replies]
        arrays = dict(aggregated_arrays.items())
        for key, reference in self.current_arrays.items():
            dtype = np.dtype(reference.dtype)
            if is_learned(key, dtype) or not np.issubdtype(dtype, np.floating):
                continue
            rows = torch.from_numpy(np.stack([array_view(record[key]).reshape(-1) for record in records]))
            median = coordinatewise_median(rows).numpy().reshape(reference.shape).astype(dtype)
            arrays[key] = Array(np.asarray(median))
        return ArrayRecord(arrays)

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        """Flower's Gaussian noise (std z * S / n), from a seeded generator, on the arrays that are learned weights
        in the global model (FedAvg turns an integer counter into its float mean: it stays noise-free, as do
        the running statistics)."""
        std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        generator = np.random.default_rng([self.seed, self._round])
        noisy = {}
        for key, array in aggregated_arrays.items():
            values = array_view(array)
            if key in self.current_arrays and not is_learned(key, np.dtype(self.current_arrays[key].dtype)):
                noisy[key] = array
                continue
            noisy[key] = Array(np.asarray(values + generator.normal(0.0, std, values.shape).astype(values.dtype)))
        return ArrayRecord(noisy)
