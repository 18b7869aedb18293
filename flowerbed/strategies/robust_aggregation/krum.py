"""Krum, Blanchard et al., NeurIPS 2017 ("Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent"): keep the one client whose model is closest to its n - f - 2
nearest neighbours. Flower's rule, computed block by block (:mod:`.krum_selection`); this
subclass reports the clients it dropped."""

from __future__ import annotations

from typing import Any

from flwr.serverapp import strategy as flwr_strategy
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..core.base import FlowerbedStrategy
from ..core.params import StrategyParams
from .krum_selection import ReportsKrumSelection


class KrumParams(StrategyParams):
    """Krum's assumption about the adversary (Blanchard et al., 2017)."""

    num_malicious: int = Field(
        1, alias="num-malicious", ge=0, description="f, the number of Byzantine clients tolerated per round (n > 2f + 2)"
    )


def check_krum_tolerance(strategy: type[FlowerbedStrategy], num_malicious: int, num_clients: int) -> None:
    """Krum's guarantee needs n > 2f + 2 (Blanchard et al., 2017, Prop. 1)."""
    if num_clients <= 2 * num_malicious + 2:
        raise strategy.param_error(
            "num_malicious",
            f"Krum needs num_clients_per_round > 2 * num-malicious + 2; got {num_clients} clients"
            f" and num-malicious={num_malicious} (at most {(num_clients - 3) // 2} is allowed)",
        )


@STRATEGIES.register("krum")
class Krum(ReportsKrumSelection, FlowerbedStrategy, flwr_strategy.Krum):
    """Flower's Krum; ``last_flagged`` lists every client except the selected one."""

    name = "krum"
    Params = KrumParams

    def init_flower(self, params: KrumParams, flower_kwargs: dict[str, Any]) -> None:
        flwr_strategy.Krum.__init__(self, num_malicious_nodes=params.num_malicious, **flower_kwargs)

    @classmethod
    def check_params(cls, params: KrumParams, num_clients_per_round: int) -> None:
        check_krum_tolerance(cls, params.num_malicious, num_clients_per_round)
