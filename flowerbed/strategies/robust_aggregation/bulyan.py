"""Bulyan, El Mhamdi et al., ICML 2018 ("The Hidden Vulnerability of Distributed Learning
in Byzantium"): select n - 2f clients with Multi-Krum, then average, per coordinate, the
n - 4f values closest to the median. Flower's rule; this subclass reports the clients the
Multi-Krum step dropped."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategy
from flwr.serverapp.strategy.multikrum import select_multikrum
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..base import FlowerbedStrategy, flower_kwargs
from ..params import StrategyParams
from flowerbed.platform.server_model import ServerModelHooks


class BulyanParams(StrategyParams):
    """Bulyan's assumption about the adversary (El Mhamdi et al., 2018)."""

    num_malicious: int = Field(
        1, alias="num-malicious", ge=0, description="f, the number of Byzantine clients tolerated per round (n >= 4f + 3)"
    )


@STRATEGIES.register("bulyan")
class Bulyan(FlowerbedStrategy, flwr_strategy.Bulyan):
    """Flower's Bulyan with a selection rule that remembers what Multi-Krum selected."""

    name = "bulyan"
    Params = BulyanParams

    def __init__(
        self,
        params: BulyanParams | Mapping[str, Any] | None = None,
        *,
        fraction_train: float = 1.0,
        num_clients_per_round: int,
        seed: int = 0,
        root_data: ServerModelHooks | None = None,
    ) -> None:
        parsed = self.init_flowerbed(params, num_clients_per_round, seed)
        self._selected: list[RecordDict] = []
        flwr_strategy.Bulyan.__init__(
            self,
            num_malicious_nodes=parsed.num_malicious,
            selection_rule=self._select_and_remember,
            **flower_kwargs(fraction_train, num_clients_per_round),
        )

    @classmethod
    def check_params(cls, params: BulyanParams, num_clients_per_round: int) -> None:
        if num_clients_per_round < 4 * params.num_malicious + 3:
            raise cls.param_error(
                "num_malicious",
                f"Bulyan needs num_clients_per_round >= 4 * num-malicious + 3; got {num_clients_per_round} clients"
                f" and num-malicious={params.num_malicious} (at most {(num_clients_per_round - 3) // 4} is allowed)",
            )

    def _select_and_remember(
        self, contents: list[RecordDict], num_malicious_nodes: int, num_nodes_to_select: int
    ) -> list[RecordDict]:
        """Flower's Multi-Krum selection (Bulyan's first step), remembered for the report."""
        self._selected = select_multikrum(contents, num_malicious_nodes, num_nodes_to_select)
        return self._selected

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's Bulyan; clients outside the Multi-Krum selection are flagged.

        Returns (None, None), like Flower, when fewer than 4f + 3 valid replies arrived.
        """
        replies = list(replies)
        self._selected = []
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            self.clear_detection()
        else:
            self.record_selection([reply.content for reply in replies if not reply.has_error()], self._selected)
        return arrays, metrics
