"""Detection reporting: whom a strategy excluded or down-weighted in a round.

Every flowerbed strategy exposes, after each ``aggregate_train``,
``last_flagged`` (partition ids kept out of the aggregate) and, for
down-weighting defences, ``last_weights`` (partition id -> weight used), so
detection precision and recall can be scored against the true attackers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from flwr.app import MetricRecord, RecordDict

from flowerbed.platform.messages import PARTITION_ID_KEY


def partition_ids_of(contents: Sequence[RecordDict]) -> list[int]:
    """The partition id each reply's (single) MetricRecord carries."""
    ids = []
    for content in contents:
        metrics = cast(MetricRecord, next(iter(content.metric_records.values()), MetricRecord()))
        if PARTITION_ID_KEY not in metrics:
            raise KeyError(f"reply metrics lack '{PARTITION_ID_KEY}' (the ClientApp must report it)")
        ids.append(int(cast(int, metrics[PARTITION_ID_KEY])))
    return ids


class DetectionReport:
    """Mixin holding the last round's detection outcome.

    ``flags_clients`` says whether the rule can leave a client out at all; the
    recorder writes ``flagged``/``detection`` only for those. Rules that
    down-weight clients report ``last_weights`` (written as ``weights``, scored as
    the attackers' relative weight) whether or not they can flag.
    """

    flags_clients: bool = True
    last_flagged: list[int]
    last_weights: dict[int, float]

    def clear_detection(self) -> None:
        """Forget the previous round (called when a round aggregates nothing)."""
        self.last_flagged = []
        self.last_weights = {}

    def record_detection(
        self,
        partition_ids: Sequence[int],
        accepted: Sequence[bool],
        weights: Sequence[float] | None = None,
    ) -> None:
        """Store who was left out (``accepted`` False) and, if given, each client's weight."""
        self.last_flagged = [pid for pid, kept in zip(partition_ids, accepted, strict=True) if not kept]
        self.last_weights = (
            {} if weights is None else {pid: float(w) for pid, w in zip(partition_ids, weights, strict=True)}
        )

    def record_selection(self, contents: Sequence[RecordDict], selected: Sequence[RecordDict]) -> None:
        """Flag the replies a selection rule (Krum, Bulyan's first step) did not return."""
        chosen = {id(content) for content in selected}
        self.record_detection(partition_ids_of(contents), [id(content) in chosen for content in contents])

    def record_all_accepted(self, contents: Sequence[RecordDict]) -> None:
        """Rules that exclude no client as a whole (mean, median, trimmed mean, DP clipping)."""
        self.record_detection(partition_ids_of(contents), [True] * len(contents))
