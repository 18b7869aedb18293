"""FedAvg, McMahan et al., AISTATS 2017 (arXiv 1602.05629): the undefended baseline."""

from __future__ import annotations

from typing import Any

from flwr.serverapp import strategy as flwr_strategy

from flowerbed.platform.registry import STRATEGIES

from .core.base import FlagsNobody, FlowerbedStrategy
from .core.params import StrategyParams


@STRATEGIES.register("fedavg")
class FedAvg(FlagsNobody, FlowerbedStrategy, flwr_strategy.FedAvg):
    """Flower's FedAvg (example-weighted mean of the client models); flags nobody."""

    name = "fedavg"
    Params = StrategyParams

    def init_flower(self, params: StrategyParams, flower_kwargs: dict[str, Any]) -> None:
        flwr_strategy.FedAvg.__init__(self, **flower_kwargs)
