"""Centered clipping (CClip), Karimireddy et al., ICML 2021 ("Learning from History for
Byzantine Robust Optimization").

Starting from the previous round's aggregated update (the server's momentum),
repeat ``v <- v + (1/n) sum_i (u_i - v) * min(1, tau / |u_i - v|)``: every
update pulls the centre by at most ``tau``. No client is excluded;
``last_weights`` are each client's coefficient ``min(1, tau/|u_i - v|) / n`` in
the last step.
"""

from __future__ import annotations

import torch
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..core.params import StrategyParams
from ..core.update_defence import Aggregation, UpdateDefence
from ..core.updates import UpdateBatch, clip_factors, distances_to


class CenteredClippingParams(StrategyParams):
    """One clipping iteration per round, as in the authors' experiments. Their code
    (epfml/byzantine-robust-optimizer) explores tau in {0.1, 10, 1000} x l in {1, 3, 5}
    (``cifar10-CC-HP-explore``) and runs its main CIFAR-10 results with tau = 100, l = 1
    (``cifar10-all.py``); the default here is the grid's middle, 10. tau is a scale that
    must be set against the update norms of the task at hand."""

    tau: float = Field(10.0, gt=0.0, description="clipping radius around the centre")
    iterations: int = Field(1, ge=1, description="l, clipping iterations per round")


def centered_clipping(
    updates: torch.Tensor, center: torch.Tensor, *, tau: float, iterations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped centre after ``iterations`` steps and each update's coefficient in the last step."""
    num_clients = updates.shape[0]
    coefficients = torch.full((num_clients,), 1.0 / num_clients, dtype=torch.float64)
    for _ in range(iterations):
        coefficients = clip_factors(distances_to(updates, center), tau) / num_clients
        center = center * (1.0 - float(coefficients.sum())) + coefficients.to(updates.dtype) @ updates
    return center, coefficients


@STRATEGIES.register("centered-clipping")
class CenteredClipping(UpdateDefence):
    """Centered clipping (Karimireddy et al., 2021) around the previous round's aggregate; flags nobody."""

    name = "centered-clipping"
    Params = CenteredClippingParams
    flags_clients = False  # down-weights (its clipping coefficients are reported), never leaves a client out

    def init_state(self) -> None:
        super().init_state()
        self._previous_update: torch.Tensor | None = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self._previous_update is None else {"previous_update": self._previous_update.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._previous_update = state.get("previous_update")

    def aggregate_updates(self, batch: UpdateBatch, server_round: int) -> Aggregation:
        start = self._previous_update
        if start is None or start.shape[0] != batch.layout.num_learned:
            start = torch.zeros(batch.layout.num_learned, dtype=batch.learned.dtype)
        update, coefficients = centered_clipping(
            batch.learned, start, tau=self.params.tau, iterations=self.params.iterations
        )
        self._previous_update = update
        return Aggregation(update, torch.ones(batch.num_clients, dtype=torch.bool), coefficients)
