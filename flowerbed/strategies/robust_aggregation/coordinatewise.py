"""Coordinate-wise rules (median, trimmed mean, Bulyan's closest-to-median mean) read block by block
from the replies' arrays, with the results of Flower's numpy implementations.

Flower stacks each layer of every client and runs ``np.median`` / ``np.partition``
along the client axis, a strided selection per coordinate (about 3 s per million
coordinates for 100 clients). Here each float32 array is read in blocks of
``BLOCK`` coordinates into a cache-sized ``(coordinates, clients)`` buffer whose
rows are sorted with NumPy's vectorised sort; every rule then reads its values
from the sorted rows:

- median: the middle value, or for an even number of clients the float32 mean
  of the two middle values, exactly as ``np.median`` computes it (bit-identical);
- trimmed mean: the mean of sorted positions ``[int(beta n), n - int(beta n))``,
  the values ``flwr.serverapp.strategy.fedtrimmedavg.trim_mean`` keeps (equal
  to float32 round-off: the sum runs in another order);
- Bulyan: the mean of the ``beta`` values closest to the median, a window of
  the sorted row (:func:`closest_to_median_window`; equal to float32
  round-off, unless two different values lie at exactly the same distance on
  either side of the median, where Flower's ``np.argpartition`` picks either).

Arrays of any other dtype (e.g. BatchNorm's int64 ``num_batches_tracked``, a
single number) go through Flower's own numpy code, so they come back as Flower
returns them (an integer array's median is float64). Values are assumed finite
(the ServerApp drops non-finite replies before aggregation).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from flowerbed.platform.arrays import array_view

from ..core.updates import column_blocks

# Coordinates per block: 100 clients x 8192 x 4 bytes = 3.2 MB, resident in cache while it is sorted.
BLOCK = 8192

SortedRule = Callable[[np.ndarray], np.ndarray]  # (coordinates, clients) rows sorted -> (coordinates,) float32
StackedRule = Callable[[np.ndarray], np.ndarray]  # (clients, *shape) any dtype -> (*shape) (Flower's numpy)


def reply_arrays(contents: Sequence[RecordDict]) -> tuple[list[ArrayRecord], list[str]]:
    """Each reply's ArrayRecord (under the first reply's record key) and the array keys, as Flower picks them."""
    record_key = next(iter(contents[0].array_records.keys()))
    records = [cast(ArrayRecord, content[record_key]) for content in contents]
    return records, list(records[0].keys())


def flat_views(records: Sequence[ArrayRecord], key: str) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """Read-only flat views of array ``key`` of every record, and its shape (checked equal across records)."""
    views = [array_view(record[key]) for record in records]
    shape = tuple(views[0].shape)
    for view in views:
        if tuple(view.shape) != shape:
            raise ValueError(f"array '{key}' has shape {tuple(view.shape)} in one reply and {shape} in another")
    return [view.reshape(-1) for view in views], shape


def all_float32(views: Sequence[np.ndarray]) -> bool:
    return all(view.dtype == np.float32 for view in views)


def client_columns(
    views: Sequence[np.ndarray], block: int = BLOCK, minus: np.ndarray | None = None
) -> Iterator[tuple[slice, np.ndarray]]:
    """(coordinate slice, ``(coordinates, clients)`` float32 buffer) for consecutive blocks of ``views``
    (each minus the flat array ``minus``, if given).

    The buffer is reused: consume it before asking for the next block.
    """
    size = views[0].size
    buffer = np.empty((min(block, size), len(views)), dtype=np.float32)
    for coordinates in column_blocks(size, block):
        columns = buffer[: coordinates.stop - coordinates.start]
        for client, view in enumerate(views):
            if minus is None:
                columns[:, client] = view[coordinates]
            else:
                np.subtract(view[coordinates], minus[coordinates], out=columns[:, client])
        yield coordinates, columns


def sorted_client_columns(views: Sequence[np.ndarray], block: int = BLOCK) -> Iterator[tuple[slice, np.ndarray]]:
    """Like :func:`client_columns`, each row (one coordinate's values over the clients) sorted ascending."""
    for columns, values in client_columns(views, block):
        values.sort(axis=1)
        yield columns, values


def median_of_sorted(values: np.ndarray) -> np.ndarray:
    """``np.median`` of each sorted row: the middle value, or the float32 mean of the two middle values."""
    middle = values.shape[1] // 2
    if values.shape[1] % 2:
        return values[:, middle].copy()
    return (values[:, middle - 1] + values[:, middle]) / np.float32(2)


def trimmed_mean_of_sorted(values: np.ndarray, beta: float) -> np.ndarray:
    """Mean of each sorted row without its ``int(beta * n)`` smallest and largest values (Flower's ``trim_mean``)."""
    low = int(beta * values.shape[1])
    return values[:, low : values.shape[1] - low].mean(axis=1)


def closest_to_median_window(values: np.ndarray, count: int) -> np.ndarray:
    """Start of a window of ``count`` values of each sorted row that are the ``count`` closest to its median.

    Along a sorted row the distance to the median falls and then rises (also
    after float rounding), so with ``t`` the ``count``-th smallest distance both
    ``{distance <= t}`` and ``{distance < t}`` are intervals of the row. The
    window must hold all of the second and lie inside the first: it starts at
    the later of the first index within ``t`` and ``(last index closer than t) + 1 - count``.
    Where values on both sides of the median tie at ``t``, this takes the left
    ones; Flower's ``np.argpartition`` may take others at the same distance.
    The middle value(s) are the closest, so a window holding one of them lies
    within ``count - 1`` places of the middle: only those places are searched.
    """
    width = values.shape[1]
    low, high = max(0, (width - 1) // 2 - count + 1), min(width, width // 2 + count)
    distances = np.abs(values[:, low:high] - median_of_sorted(values)[:, None])
    threshold = np.partition(distances, count - 1, axis=1)[:, count - 1 : count]
    closer = distances < threshold
    end_of_closer = np.argmax(closer, axis=1) + closer.sum(axis=1)  # 0 when nothing is closer
    return low + np.maximum(np.argmax(distances <= threshold, axis=1), end_of_closer - count)


def closest_to_median_mean_of_sorted(values: np.ndarray, count: int) -> np.ndarray:
    """Mean of the ``count`` values of each sorted row closest to the row's median (Bulyan's second step)."""
    start = closest_to_median_window(values, count)
    return np.take_along_axis(values, start[:, None] + np.arange(count), axis=1).mean(axis=1)


def coordinatewise(records: Sequence[ArrayRecord], keys: Iterable[str], rule: SortedRule, reference: StackedRule) -> ArrayRecord:
    """Apply ``rule`` to every coordinate of the float32 arrays, ``reference`` (Flower's numpy) to the others."""
    arrays = ArrayRecord()
    for key in keys:
        views, shape = flat_views(records, key)
        if all_float32(views):
            out = np.empty(views[0].size, dtype=np.float32)
            for columns, values in sorted_client_columns(views):
                out[columns] = rule(values)
            arrays[key] = Array(np.asarray(out.reshape(shape)))
        else:
            arrays[key] = Array(np.asarray(reference(np.stack([view.reshape(shape) for view in views]))))
    return arrays


def median_aggregate(records: Sequence[ArrayRecord], keys: Iterable[str]) -> ArrayRecord:
    """Flower's FedMedian aggregate (``np.median`` over the clients, per array)."""
    return coordinatewise(records, keys, median_of_sorted, lambda stacked: np.median(stacked, axis=0))


def trimmed_mean_aggregate(records: Sequence[ArrayRecord], keys: Iterable[str], beta: float) -> ArrayRecord:
    """Flower's FedTrimmedAvg aggregate (``trim_mean(stacked, beta)`` per array)."""
    return coordinatewise(
        records, keys, lambda values: trimmed_mean_of_sorted(values, beta), lambda stacked: trim_mean(stacked, beta)
    )


def bulyan_coordinate_aggregate(records: Sequence[ArrayRecord], keys: Iterable[str], count: int) -> ArrayRecord:
    """Bulyan's second step as Flower computes it: per coordinate, the mean of the ``count`` values closest to the median."""

    def reference(stacked: np.ndarray) -> np.ndarray:
        median = np.median(stacked, axis=0)
        return aggregate_n_closest_weights([median], [[layer] for layer in stacked], count)[0]

    return coordinatewise(records, keys, lambda values: closest_to_median_mean_of_sorted(values, count), reference)


class CoordinatewiseAggregation:
    """Mixin for subclasses of Flower's FedMedian / FedTrimmedAvg: their ``aggregate_train``, with the
    arrays aggregated by :meth:`aggregate_arrays` (unlike Flower's, it leaves the replies' arrays in place)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid_replies, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid_replies:
            return None, None
        contents = [reply.content for reply in valid_replies]
        records, keys = reply_arrays(contents)
        arrays = self.aggregate_arrays(records, keys)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return arrays, metrics

    @abstractmethod
    def aggregate_arrays(self, records: Sequence[ArrayRecord], keys: list[str]) -> ArrayRecord:
        """The aggregated arrays ``keys`` of the valid replies' ``records``."""


def weighted_average(contents: Sequence[RecordDict], weighted_by_key: str, block: int = 1 << 16) -> ArrayRecord:
    """Flower's ``aggregate_arrayrecords``, bit for bit, one cache-sized block of coordinates at a time.

    Flower accumulates ``sum_i value_i * (w_i / sum w)`` array by array, each
    product a full-size temporary; the same elementwise operations in the same
    order over blocks give the same numbers without leaving the cache.
    """
    weights = [float(cast(float, next(iter(c.metric_records.values()), MetricRecord())[weighted_by_key])) for c in contents]
    total = sum(weights)
    factors = [weight / total for weight in weights]
    records, keys = reply_arrays(contents)
    arrays = ArrayRecord()
    for key in keys:
        views, shape = flat_views(records, key)
        size = views[0].size
        out = np.empty(size, dtype=(views[0][:0] * factors[0]).dtype)  # Flower's product dtype (int64 -> float64)
        for columns in column_blocks(size, block):
            total_block = views[0][columns] * factors[0]
            for view, factor in zip(views[1:], factors[1:], strict=True):
                total_block += view[columns] * factor
            out[columns] = total_block
        arrays[key] = Array(np.asarray(out.reshape(shape)))
    return arrays
