"""Flower's Krum / Multi-Krum aggregation step, plus a record of whom the selection left out.

Flower's ``MultiKrum.aggregate_train`` does not expose which replies
``select_multikrum`` picked; this mixin runs the same three Flower calls
(select, aggregate the arrays, aggregate the metrics) and keeps the selection.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords


class ReportsKrumSelection:
    """Mixin for subclasses of Flower's MultiKrum (and so Krum)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's MultiKrum aggregation; clients Krum did not select are flagged."""
        valid_replies, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid_replies:
            self.clear_detection()
            return None, None
        contents = [reply.content for reply in valid_replies]
        selected = select_multikrum(
            contents,
            num_malicious_nodes=self.num_malicious_nodes,
            num_nodes_to_select=self.num_nodes_to_select,
        )
        self.record_selection(contents, selected)
        arrays = aggregate_arrayrecords(selected, self.weighted_by_key)
        metrics = self.train_metrics_aggr_fn(selected, self.weighted_by_key)
        return arrays, metrics
