"""FedAvg, McMahan et al., AISTATS 2017 (arXiv 1602.05629): the undefended baseline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp import strategy as flwr_strategy

from flowerbed.platform.registry import STRATEGIES
from flowerbed.platform.server_model import ServerModelHooks

from .core.base import FlagsNobody, FlowerbedStrategy, flower_kwargs
from .core.params import StrategyParams


@STRATEGIES.register("fedavg")
class FedAvg(FlagsNobody, FlowerbedStrategy, flwr_strategy.FedAvg):
    """Flower's FedAvg (example-weighted mean of the client models); flags nobody."""

    name = "fedavg"
    Params = StrategyParams

    def __init__(
        self,
        params: StrategyParams | Mapping[str, Any] | None = None,
        *,
        fraction_train: float = 1.0,
        num_clients_per_round: int,
        seed: int = 0,
        root_data: ServerModelHooks | None = None,
    ) -> None:
        self.init_flowerbed(params, num_clients_per_round, seed)
        flwr_strategy.FedAvg.__init__(self, **flower_kwargs(fraction_train, num_clients_per_round))
