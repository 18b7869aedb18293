"""Central differential privacy with server-side fixed clipping (McMahan et al., ICLR 2018,
"Learning Differentially Private Recurrent Language Models", arXiv 1710.06963; Geyer et al.,
arXiv 1712.07557): clip every update to norm S, average with FedAvg, add Gaussian noise of
standard deviation z * S / n. Flower's DifferentialPrivacyServerSideFixedClipping around
FedAvg; the noise is drawn from a generator seeded by (run seed, round)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp import strategy as flwr_strategy
from flwr.supercore.differential_privacy import compute_stdv
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..base import FlagsNobody, FlowerbedStrategy, flower_kwargs
from ..params import StrategyParams
from flowerbed.platform.server_model import ServerModelHooks


class DpFixedClippingParams(StrategyParams):
    """DP-FedAvg with fixed clipping (McMahan et al., 2018 use noise multiplier z = 1)."""

    noise_multiplier: float = Field(
        1.0, alias="noise-multiplier", ge=0.0, description="z; the noise std is z * clipping-norm / clients per round"
    )
    clipping_norm: float = Field(
        1.0, alias="clipping-norm", gt=0.0, description="S, the L2 bound of every client update (tune to the update norms)"
    )


@STRATEGIES.register("dp-fixed-clipping")
class DpFixedClipping(FlagsNobody, FlowerbedStrategy, flwr_strategy.DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed-clipping DP wrapper around Flower's FedAvg; flags nobody."""

    name = "dp-fixed-clipping"
    Params = DpFixedClippingParams

    def __init__(
        self,
        params: DpFixedClippingParams | Mapping[str, Any] | None = None,
        *,
        fraction_train: float = 1.0,
        num_clients_per_round: int,
        seed: int = 0,
        root_data: ServerModelHooks | None = None,
    ) -> None:
        parsed = self.init_flowerbed(params, num_clients_per_round, seed)
        flwr_strategy.DifferentialPrivacyServerSideFixedClipping.__init__(
            self,
            flwr_strategy.FedAvg(**flower_kwargs(fraction_train, num_clients_per_round)),
            noise_multiplier=parsed.noise_multiplier,
            clipping_norm=parsed.clipping_norm,
            num_sampled_clients=num_clients_per_round,
        )
        self._round = 0

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's clipping, FedAvg and noise (seeded by this round)."""
        self._round = server_round
        return super().aggregate_train(server_round, replies)

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        """Flower's Gaussian noise (std z * S / n on every array), from a seeded generator."""
        std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        generator = np.random.default_rng([self.seed, self._round])
        noisy = {}
        for key, array in aggregated_arrays.items():
            values = array.numpy()
            noisy[key] = Array(np.asarray(values + generator.normal(0.0, std, values.shape).astype(values.dtype)))
        return ArrayRecord(noisy)
