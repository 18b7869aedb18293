"""Bulyan, El Mhamdi et al., ICML 2018 ("The Hidden Vulnerability of Distributed Learning
in Byzantium"): select n - 2f clients with Multi-Krum, then average, per coordinate, the
n - 4f values closest to the median. Flower's rule, computed with the block-wise Multi-Krum
selection of :mod:`.krum_selection` and the sorted-coordinate kernel of
:mod:`.coordinatewise`; this subclass reports the clients the Multi-Krum step dropped.
Flower scores all clients once and keeps the n - 2f best; the paper applies Krum
recursively (pick one, remove it, re-score the rest), which can keep another set when
attackers collude."""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp import strategy as flwr_strategy
from flwr.supercore import log
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..core.base import FlowerbedStrategy
from ..core.params import StrategyParams
from .coordinatewise import bulyan_coordinate_aggregate, reply_arrays
from .krum_selection import select_multikrum


class BulyanParams(StrategyParams):
    """Bulyan's assumption about the adversary (El Mhamdi et al., 2018)."""

    num_malicious: int = Field(
        1, alias="num-malicious", ge=0, description="f, the number of Byzantine clients tolerated per round (n >= 4f + 3)"
    )


@STRATEGIES.register("bulyan")
class Bulyan(FlowerbedStrategy, flwr_strategy.Bulyan):
    """Flower's Bulyan; clients outside the Multi-Krum selection are flagged."""

    name = "bulyan"
    Params = BulyanParams

    def init_flower(self, params: BulyanParams, flower_kwargs: dict[str, Any]) -> None:
        flwr_strategy.Bulyan.__init__(
            self, num_malicious_nodes=params.num_malicious, selection_rule=select_multikrum, **flower_kwargs
        )

    @classmethod
    def check_params(cls, params: BulyanParams, num_clients_per_round: int) -> None:
        if num_clients_per_round < 4 * params.num_malicious + 3:
            raise cls.param_error(
                "num_malicious",
                f"Bulyan needs num_clients_per_round >= 4 * num-malicious + 3; got {num_clients_per_round} clients"
                f" and num-malicious={params.num_malicious} (at most {(num_clients_per_round - 3) // 4} is allowed)",
            )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's ``Bulyan.aggregate_train``: theta = n - 2f clients by Multi-Krum, then per coordinate
        the mean of the beta = theta - 2f values closest to their median.

        Returns (None, None), like Flower, when fewer than 4f + 3 valid replies arrived.
        """
        valid_replies, _ = self._check_and_log_replies(replies, is_train=True)
        if len(valid_replies) < 4 * self.num_malicious_nodes + 3:
            log(
                WARNING,
                "Insufficient replies, skipping Bulyan aggregation: "
                "Required at least %d (4*num_malicious_nodes + 3), but received %d.",
                4 * self.num_malicious_nodes + 3,
                len(valid_replies),
            )
            self.clear_detection()
            return None, None
        contents = [reply.content for reply in valid_replies]
        theta = len(contents) - 2 * self.num_malicious_nodes
        beta = theta - 2 * self.num_malicious_nodes
        selected = self.selection_rule(contents, self.num_malicious_nodes, theta)
        records, keys = reply_arrays(selected)
        arrays = bulyan_coordinate_aggregate(records, keys, beta)
        metrics = self.train_metrics_aggr_fn(selected, self.weighted_by_key)
        self.record_selection(contents, selected)
        return arrays, metrics
