"""Robust learning rate (RLR), Ozdayi et al., AAAI 2021 ("Defending against Backdoors in
Federated Learning with Robust Learning Rate").

Per coordinate, the server counts how many clients agree on the sign of the
update. Where ``|sum_i sign(u_i)| < theta`` the server learning rate becomes
``-eta`` (the coordinate moves against the average), elsewhere it stays ``eta``;
the new model is ``global + lr * (example-weighted mean update)``. No client
is excluded; ``last_flipped_fraction`` is the share of flipped coordinates.
"""

from __future__ import annotations

import torch
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..core.params import StrategyParams
from ..core.update_defence import Aggregation, UpdateDefence
from ..core.updates import UpdateBatch, column_blocks


class RlrParams(StrategyParams):
    """RLR (Ozdayi et al., 2021): theta = 4 in the paper's 10-agent setting, server lr eta = 1."""

    threshold: int = Field(
        4, ge=1, description="theta, sign agreement below which a coordinate's learning rate flips (> number of attackers)"
    )
    server_lr: float = Field(1.0, alias="server-lr", gt=0.0, description="eta, the server learning rate")


def rlr_aggregate(
    updates: torch.Tensor, weights: torch.Tensor, *, threshold: int, server_lr: float = 1.0
) -> tuple[Aggregation, float]:
    """RLR's update and the fraction of coordinates whose learning rate was flipped."""
    update = weights.to(updates.dtype) @ updates
    ones = torch.ones(updates.shape[0], dtype=updates.dtype)
    flipped = 0
    for block in column_blocks(updates.shape[1]):
        agreement = (ones @ torch.sign(updates[:, block])).abs()  # sum of signs over clients, as one gemv
        flip = agreement < threshold
        flipped += int(flip.sum())
        update[block] *= torch.where(flip, -server_lr, server_lr).to(updates.dtype)
    accepted = torch.ones(updates.shape[0], dtype=torch.bool)
    return Aggregation(update, accepted), flipped / max(1, updates.shape[1])


@STRATEGIES.register("rlr")
class RobustLearningRate(UpdateDefence):
    """RLR (Ozdayi et al., 2021): flips the learning rate where clients disagree on the sign."""

    name = "rlr"
    Params = RlrParams
    flags_clients = False  # acts per coordinate, never on a client as a whole
    last_flipped_fraction: float = 0.0

    @classmethod
    def check_params(cls, params: RlrParams, num_clients_per_round: int) -> None:
        if params.threshold > num_clients_per_round:
            raise cls.param_error(
                "threshold",
                f"threshold {params.threshold} exceeds the {num_clients_per_round} clients per round"
                " (every coordinate would move backwards)",
            )

    def aggregate_updates(self, batch: UpdateBatch, server_round: int) -> Aggregation:
        result, self.last_flipped_fraction = rlr_aggregate(
            batch.learned, batch.example_weights, threshold=self.params.threshold, server_lr=self.params.server_lr
        )
        return result
