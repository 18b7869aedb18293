"""Coordinate-wise median, Yin et al., ICML 2018 ("Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates"). No client is excluded as a whole, so nobody is
flagged. Same result as Flower's FedMedian, computed block by block on sorted
coordinates (see :mod:`.coordinatewise`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp import strategy as flwr_strategy

from flowerbed.platform.registry import STRATEGIES

from ..core.base import FlagsNobody, FlowerbedStrategy
from ..core.params import StrategyParams
from .coordinatewise import CoordinatewiseAggregation, median_aggregate


@STRATEGIES.register("median")
class Median(FlagsNobody, FlowerbedStrategy, CoordinatewiseAggregation, flwr_strategy.FedMedian):
    """Flower's FedMedian (unweighted median of each coordinate over the client models)."""

    name = "median"
    Params = StrategyParams

    def init_flower(self, params: StrategyParams, flower_kwargs: dict[str, Any]) -> None:
        flwr_strategy.FedMedian.__init__(self, **flower_kwargs)

    def aggregate_arrays(self, records: Sequence[ArrayRecord], keys: list[str]) -> ArrayRecord:
        return median_aggregate(records, keys)
