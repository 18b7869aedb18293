"""Multi-Krum, Blanchard et al., NeurIPS 2017: average the m clients with the best Krum
scores (m = n - f by default, as in the paper). Flower's rule, computed block by block
(:mod:`.krum_selection`); this subclass reports the clients it dropped. As in Flower, the m
chosen clients are averaged weighted by their example counts; the paper takes their plain
mean (under the bench's Dirichlet split a large client gets up to ~1.9x that weight)."""

from __future__ import annotations

from typing import Any

from flwr.serverapp import strategy as flwr_strategy
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..core.base import FlowerbedStrategy
from .krum import KrumParams, check_krum_tolerance
from .krum_selection import ReportsKrumSelection


class MultiKrumParams(KrumParams):
    """Multi-Krum (Blanchard et al., 2017): f, and how many clients to average."""

    num_selected: int | None = Field(
        None, alias="num-selected", ge=1, description="m, clients averaged per round (default n - f)"
    )


@STRATEGIES.register("multi-krum")
class MultiKrum(ReportsKrumSelection, FlowerbedStrategy, flwr_strategy.MultiKrum):
    """Flower's MultiKrum; ``last_flagged`` lists the clients outside the m selected."""

    name = "multi-krum"
    Params = MultiKrumParams

    def init_flower(self, params: MultiKrumParams, flower_kwargs: dict[str, Any]) -> None:
        num_selected = params.num_selected or self.num_clients_per_round - params.num_malicious
        flwr_strategy.MultiKrum.__init__(
            self, num_malicious_nodes=params.num_malicious, num_nodes_to_select=num_selected, **flower_kwargs
        )

    @classmethod
    def check_params(cls, params: MultiKrumParams, num_clients_per_round: int) -> None:
        check_krum_tolerance(cls, params.num_malicious, num_clients_per_round)
        if params.num_selected is not None and params.num_selected > num_clients_per_round:
            raise cls.param_error(
                "num_selected",
                f"cannot select {params.num_selected} of {num_clients_per_round} clients per round",
            )
