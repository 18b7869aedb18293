"""Drop malformed client updates before any aggregation rule or defence sees them."""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ArrayRecord, Message

logger = logging.getLogger("flowerbed")


def malformed_reason(reply: Message, reference: ArrayRecord) -> str | None:
    """Why a reply cannot be aggregated (missing parts, wrong keys/shapes/dtypes, NaN/Inf), or None."""
    content = reply.content
    if "arrays" not in content.array_records or "metrics" not in content.metric_records:
        return "reply lacks 'arrays' or 'metrics'"
    metrics = content["metrics"]
    if "partition-id" not in metrics or "num-examples" not in metrics:
        return "metrics lack 'partition-id' or 'num-examples'"
    if not float(metrics["num-examples"]) > 0:
        return f"num-examples={metrics['num-examples']} is not positive"
    arrays = content["arrays"]
    if list(arrays.keys()) != list(reference.keys()):
        return "array names differ from the global model's"
    for name, array in arrays.items():
        expected = reference[name]
        if tuple(array.shape) != tuple(expected.shape):
            return f"'{name}' has shape {tuple(array.shape)}, expected {tuple(expected.shape)}"
        if array.dtype != expected.dtype:
            return f"'{name}' has dtype {array.dtype}, expected {expected.dtype}"
        values = array.numpy()
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            return f"'{name}' contains NaN or Inf"
    return None


def drop_malformed(replies: list[Message], reference: ArrayRecord) -> tuple[list[Message], list[dict]]:
    """Split replies into usable ones and ``{"partition_id", "reason"}`` records of the dropped ones."""
    kept, dropped = [], []
    for reply in replies:
        reason = malformed_reason(reply, reference)
        if reason is None:
            kept.append(reply)
            continue
        try:
            partition_id = int(reply.content["metrics"]["partition-id"])
        except (KeyError, TypeError, ValueError):
            partition_id = -1
        logger.warning("dropped the update of partition %s: %s", partition_id, reason)
        dropped.append({"partition_id": partition_id, "reason": reason})
    return kept, dropped
