"""A user-written defence for flowerbed (the example of docs/custom-defence.md)."""

from __future__ import annotations

from pydantic import Field

from flowerbed.platform.registry import STRATEGIES
from flowerbed.strategies.core.params import StrategyParams
from flowerbed.strategies.core.update_defence import Aggregation, UpdateDefence
from flowerbed.strategies.core.updates import UpdateBatch


class NormFilterParams(StrategyParams):
    """Hyper-parameters, set as run-config keys ``strategy.norm-filter.<alias>``."""

    factor: float = Field(2.0, gt=1.0, description="Reject updates longer than factor x the round's median norm.")


@STRATEGIES.register("norm-filter")  # optional: lets `plugins = "my_defences"` make it known by name
class NormFilter(UpdateDefence):
    """Reject every update whose L2 norm exceeds ``factor`` times the round's median norm,
    then average the rest by example count. The rejected clients are reported as flagged."""

    name = "norm-filter"
    Params = NormFilterParams

    def aggregate_updates(self, batch: UpdateBatch, server_round: int) -> Aggregation:
        norms = batch.learned_norms  # (clients,) L2 norms, taken while the updates were flattened
        accepted = norms <= self.params.factor * norms.median()
        weights = batch.example_weights * accepted  # FedAvg weights, rejected clients zeroed
        weights = weights / weights.sum()
        return Aggregation(update=weights.to(batch.learned.dtype) @ batch.learned, accepted=accepted)
