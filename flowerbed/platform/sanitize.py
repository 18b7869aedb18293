"""Drop malformed client replies before a strategy sees them.

A reply is kept only if it carries no error, exactly one ArrayRecord with the
global model's keys, shapes and dtypes and only finite values, and exactly one
MetricRecord with a positive finite ``num-examples`` and an integer
``partition-id`` not already seen this round. The ServerApp calls
:func:`sanitize_replies` before ``aggregate_train`` and records the reasons.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from flowerbed.platform.arrays import array_view
from flowerbed.platform.messages import NUM_EXAMPLES_KEY, PARTITION_ID_KEY


@dataclass(frozen=True)
class DroppedReply:
    """A reply left out of aggregation, and why."""

    reply: Message
    partition_id: int | None
    reason: str


def _partition_id(metrics: MetricRecord | None) -> int | None:
    value = None if metrics is None else metrics.get(PARTITION_ID_KEY)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def reply_problem(reply: Message, global_arrays: ArrayRecord, weighted_by_key: str = NUM_EXAMPLES_KEY) -> str | None:
    """Why ``reply`` cannot be aggregated, or None if it can."""
    if reply.has_error():
        return f"client error: {reply.error.reason}"
    content = reply.content
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, got {len(content.metric_records)}"
    metrics = cast(MetricRecord, next(iter(content.metric_records.values())))
    if _partition_id(metrics) is None:
        return f"metric '{PARTITION_ID_KEY}' missing or not an integer"
    weight = metrics.get(weighted_by_key)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
        return f"metric '{weighted_by_key}' missing or not a positive finite number (got {weight!r})"
    if len(content.array_records) != 1:
        return f"expected one ArrayRecord, got {len(content.array_records)}"
    arrays = cast(ArrayRecord, next(iter(content.array_records.values())))
    if set(arrays.keys()) != set(global_arrays.keys()):
        difference = sorted(set(arrays.keys()) ^ set(global_arrays.keys()))
        return f"array keys differ from the global model's: {difference[:5]}"
    for key, reference in global_arrays.items():
        array = arrays[key]
        if tuple(array.shape) != tuple(reference.shape):
            return f"array '{key}' has shape {tuple(array.shape)}, expected {tuple(reference.shape)}"
        if array.dtype != reference.dtype:
            return f"array '{key}' has dtype {array.dtype}, expected {reference.dtype}"
        try:
            values = array_view(array)
        except (TypeError, ValueError) as error:
            return f"array '{key}' cannot be read: {error}"
        if values.dtype.kind in "fc" and not bool(np.isfinite(values).all()):
            return f"array '{key}' has NaN or Inf values"
    return None


def sanitize_replies(
    replies: Iterable[Message], global_arrays: ArrayRecord, weighted_by_key: str = NUM_EXAMPLES_KEY
) -> tuple[list[Message], list[DroppedReply]]:
    """Split ``replies`` into the well-formed ones and the dropped ones with their reasons.

    Of two replies with the same partition id only the first is kept.
    """
    kept: list[Message] = []
    dropped: list[DroppedReply] = []
    seen: set[int] = set()
    for reply in replies:
        metrics = None
        if not reply.has_error() and len(reply.content.metric_records) == 1:
            metrics = cast(MetricRecord, next(iter(reply.content.metric_records.values())))
        partition_id = _partition_id(metrics)
        problem = reply_problem(reply, global_arrays, weighted_by_key)
        if problem is None and partition_id in seen:
            problem = f"duplicate {PARTITION_ID_KEY} {partition_id}"
        if problem is None:
            seen.add(cast(int, partition_id))
            kept.append(reply)
        else:
            dropped.append(DroppedReply(reply, partition_id, problem))
    return kept, dropped
