"""Coordinate-wise trimmed mean, Yin et al., ICML 2018 ("Byzantine-Robust Distributed
Learning: Towards Optimal Statistical Rates"): drop the beta fraction of largest and of
smallest values of each coordinate, average the rest. No client is
excluded as a whole, so nobody is flagged. Same result as Flower's FedTrimmedAvg, computed
block by block on sorted coordinates (see :mod:`.coordinatewise`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp import strategy as flwr_strategy
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..core.base import FlagsNobody, FlowerbedStrategy
from ..core.params import StrategyParams
from .coordinatewise import CoordinatewiseAggregation, trimmed_mean_aggregate


class TrimmedMeanParams(StrategyParams):
    """Trimmed mean (Yin et al., 2018); beta as in Flower's FedTrimmedAvg."""

    beta: float = Field(0.2, ge=0.0, lt=0.5, description="fraction of values cut from each tail of every coordinate")


@STRATEGIES.register("trimmed-mean")
class TrimmedMean(FlagsNobody, FlowerbedStrategy, CoordinatewiseAggregation, flwr_strategy.FedTrimmedAvg):
    """Flower's FedTrimmedAvg."""

    name = "trimmed-mean"
    Params = TrimmedMeanParams

    def init_flower(self, params: TrimmedMeanParams, flower_kwargs: dict[str, Any]) -> None:
        flwr_strategy.FedTrimmedAvg.__init__(self, beta=params.beta, **flower_kwargs)

    def aggregate_arrays(self, records: Sequence[ArrayRecord], keys: list[str]) -> ArrayRecord:
        """Cut ``int(beta * n)`` values from each tail, n the number of valid replies (as Flower does)."""
        return trimmed_mean_aggregate(records, keys, self.beta)

    @classmethod
    def check_params(cls, params: TrimmedMeanParams, num_clients_per_round: int) -> None:
        if params.beta > 0 and int(params.beta * num_clients_per_round) == 0:
            raise cls.param_error(
                "beta",
                f"beta={params.beta} trims no value with {num_clients_per_round} clients per round"
                f" (needs beta >= {1 / num_clients_per_round:.3g}, or 0 for the plain mean)",
            )
