"""Base class of the defences flowerbed implements itself (on top of Flower's FedAvg).

Flower's FedAvg samples clients and checks replies; the subclass only decides,
from the round's :class:`UpdateBatch`, the aggregated update and which clients
it accepted (and with what weight). The global model of the round is kept from
``configure_train``, since every update is measured against it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .base import FlowerbedStrategy
from .params import StrategyParams
from .updates import UpdateBatch, UpdateMatrixBuffer


@dataclass
class Aggregation:
    """A defence's decision for one round.

    update: aggregated update of the learned weights, shape ``(batch.layout.num_learned,)``.
    accepted: bool ``(clients,)``: whose update entered the aggregate (the others are reported as flagged).
    weights: ``(clients,)`` weight each client received, for down-weighting defences (else None).
    """

    update: torch.Tensor
    accepted: torch.Tensor
    weights: torch.Tensor | None = None


class UpdateDefence(FlowerbedStrategy, FedAvg):
    """FedAvg whose aggregation is replaced by a defence computed on client updates.

    A subclass needs no constructor: it declares ``name``, ``Params``, ``aggregate_updates``
    and, if it keeps state, ``init_state`` (calling ``super().init_state()`` first).
    """

    def init_flower(self, params: StrategyParams, flower_kwargs: dict[str, Any]) -> None:
        FedAvg.__init__(self, **flower_kwargs)

    def init_state(self) -> None:
        self._global_arrays: ArrayRecord | None = None
        self._update_matrix = UpdateMatrixBuffer()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Keep the round's global model, then sample and configure clients as FedAvg does."""
        self._global_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies with :meth:`aggregate_updates` and record whom it flagged."""
        valid_replies, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid_replies:
            self.clear_detection()
            return None, None
        if self._global_arrays is None:
            raise RuntimeError(f"{type(self).__name__}: configure_train must run before aggregate_train")
        contents = [reply.content for reply in valid_replies]
        batch = UpdateBatch.from_contents(contents, self._global_arrays, self.weighted_by_key, self._update_matrix)
        result = self.aggregate_updates(batch, server_round)
        arrays = batch.to_arrays(result.update, result.accepted)
        accepted = result.accepted.tolist()
        accepted_contents = [content for content, kept in zip(contents, accepted, strict=True) if kept]
        metrics = self.train_metrics_aggr_fn(accepted_contents, self.weighted_by_key) if accepted_contents else None
        weights = None if result.weights is None else result.weights.tolist()
        self.record_detection(batch.partition_ids, accepted, weights)
        return arrays, metrics

    @abstractmethod
    def aggregate_updates(self, batch: UpdateBatch, server_round: int) -> Aggregation:
        """Decide the round's aggregated update from the flattened client updates."""
