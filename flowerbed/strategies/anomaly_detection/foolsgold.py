"""FoolsGold, Fung et al., RAID 2020 ("The Limitations of Federated Learning in Sybil Settings").

Sybils pursuing one goal send similar updates round after round. FoolsGold keeps
each client's summed update history, measures pairwise cosine similarity of the
histories, pardons honest clients that merely resemble a more suspicious one,
and turns each client's maximum similarity into a weight through a logit
(confidence kappa = 1). The round's update is the weighted mean of the updates.
The paper's optional per-feature importance weighting is not used.
"""

from __future__ import annotations

import torch
from pydantic import Field

from flowerbed.platform.registry import STRATEGIES

from ..core.params import StrategyParams
from ..core.update_defence import Aggregation, UpdateDefence
from ..core.updates import UpdateBatch, cosine_similarity_matrix


class FoolsGoldParams(StrategyParams):
    """FoolsGold's logit confidence (Fung et al., 2020: kappa = 1)."""

    confidence: float = Field(1.0, gt=0.0, description="kappa, the slope of the logit that maps similarity to weight")


def foolsgold_weights(histories: torch.Tensor, confidence: float = 1.0) -> torch.Tensor:
    """FoolsGold's per-client weights in [0, 1] from the clients' update histories (Fung et al., Alg. 1)."""
    num_clients = histories.shape[0]
    similarity = cosine_similarity_matrix(histories) - torch.eye(num_clients, dtype=torch.float64)
    max_similarity = similarity.max(dim=1).values
    # Pardoning: scale down i's similarity to a client j that is itself more suspicious.
    ratio = max_similarity[:, None] / torch.where(max_similarity == 0, 1.0, max_similarity)[None, :]
    similarity = torch.where(max_similarity[:, None] < max_similarity[None, :], similarity * ratio, similarity)
    weights = (1.0 - similarity.max(dim=1).values).clamp(0.0, 1.0)
    if float(weights.max()) == 0.0:
        return weights
    weights = weights / weights.max()
    weights = torch.where(weights == 1.0, torch.full_like(weights, 0.99), weights)
    weights = confidence * (torch.log(weights / (1.0 - weights)) + 0.5)
    return torch.nan_to_num(weights, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


def foolsgold_aggregate(updates: torch.Tensor, histories: torch.Tensor, confidence: float = 1.0) -> Aggregation:
    """Mean of ``updates`` weighted by FoolsGold's weights from ``histories``; zero weight = flagged."""
    weights = foolsgold_weights(histories, confidence)
    total = weights.sum()
    if float(total) == 0.0:
        return Aggregation(torch.zeros(updates.shape[1], dtype=updates.dtype), weights > 0, weights)
    update = (weights / total).to(updates.dtype) @ updates
    return Aggregation(update, weights > 0, weights)


class UpdateHistory:
    """Each client's summed updates, one row per partition id ever seen."""

    def __init__(self) -> None:
        self._rows: torch.Tensor | None = None
        self._row_of: dict[int, int] = {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self._rows is None:
            return {}
        return {"rows": self._rows.clone(), "partition_ids": torch.tensor(list(self._row_of), dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "rows" not in state:
            self._rows, self._row_of = None, {}
            return
        self._rows = state["rows"].clone()
        self._row_of = {int(pid): row for row, pid in enumerate(state["partition_ids"].tolist())}

    def add(self, partition_ids: list[int], updates: torch.Tensor) -> torch.Tensor:
        """Add this round's updates; return the histories of ``partition_ids`` (in that order)."""
        known = len(self._row_of)
        new_ids = [pid for pid in partition_ids if pid not in self._row_of]
        if new_ids:
            grown = torch.empty(known + len(new_ids), updates.shape[1], dtype=updates.dtype)
            if self._rows is not None:
                grown[:known] = self._rows
            grown[known:] = 0.0
            self._rows = grown
            for pid in new_ids:
                self._row_of[pid] = len(self._row_of)
        assert self._rows is not None
        rows = torch.tensor([self._row_of[pid] for pid in partition_ids])
        first = int(rows[0])
        if torch.equal(rows, torch.arange(first, first + len(rows))):
            return self._rows[first : first + len(rows)].add_(updates)
        self._rows.index_add_(0, rows, updates)
        return self._rows.index_select(0, rows)


@STRATEGIES.register("foolsgold")
class FoolsGold(UpdateDefence):
    """FoolsGold (Fung et al., 2020): down-weights clients whose update histories look alike."""

    name = "foolsgold"
    Params = FoolsGoldParams

    def init_state(self) -> None:
        super().init_state()
        self._history = UpdateHistory()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"history.{key}": value for key, value in self._history.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._history.load_state_dict({key.removeprefix("history."): value for key, value in state.items()})

    def aggregate_updates(self, batch: UpdateBatch, server_round: int) -> Aggregation:
        histories = self._history.add(batch.partition_ids, batch.learned)
        return foolsgold_aggregate(batch.learned, histories, self.params.confidence)
