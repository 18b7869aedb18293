"""Client updates as one tensor, and the geometry every defence computes on it.

A round's replies are flattened once into a ``(clients x parameters)`` float32
tensor of updates (local model - global model). The learned weights come first
in the flat vector and are what every defence measures and aggregates (the
papers define their rules on model parameters); BatchNorm's running statistics
and integer counters (``num_batches_tracked``) form a tail the defences leave
alone: it moves by the coordinate-wise median of the accepted clients' tails
(counters rounded back). Not their mean: a defence that clips or down-weights an
attacker's weights would otherwise let its statistics through at full weight, and
model replacement boosts those too (one boosted client among ten took clean
accuracy from 0.91 to 0.65 through the running variances alone). For the ``cnn``
model the running statistics move more than the weights in a benign round (56% of the
squared update norm over the 20 clients of the bench federation,
``benchmarks/update_geometry.py``), so measuring them would make
norms, distances and cosines mostly about BatchNorm statistics. Distances and
cosine similarities come from one Gram matrix, so pairwise work is a single
matrix product. Each row's norm (over the learned weights) is taken while the
row is written, and the matrix itself can live in an
:class:`UpdateMatrixBuffer` kept across rounds.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from flowerbed.platform.arrays import array_view, is_learned
from flowerbed.platform.messages import NUM_EXAMPLES_KEY

from .detection import partition_ids_of


@dataclass(frozen=True)
class ArrayLayout:
    """Where each array of a model's ArrayRecord lives in the flat vector."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    offsets: tuple[int, ...]
    num_learned: int
    size: int

    @classmethod
    def of(cls, record: ArrayRecord) -> ArrayLayout:
        """The layout of ``record``: learned weights first (in key order), then running statistics, then integer arrays."""
        keys = tuple(record.keys())
        shapes = tuple(tuple(record[key].shape) for key in keys)
        dtypes = tuple(np.dtype(record[key].dtype) for key in keys)
        learned = [is_learned(key, dtype) for key, dtype in zip(keys, dtypes, strict=True)]
        floating = [np.issubdtype(dtype, np.floating) for dtype in dtypes]
        group = [0 if is_weight else 1 if is_float else 2 for is_weight, is_float in zip(learned, floating, strict=True)]
        offsets = [0] * len(keys)
        position = 0
        for wanted in (0, 1, 2):
            for index, in_group in enumerate(group):
                if in_group == wanted:
                    offsets[index] = position
                    position += int(np.prod(shapes[index], dtype=np.int64))
        num_learned = sum(int(np.prod(s, dtype=np.int64)) for s, g in zip(shapes, learned, strict=True) if g)
        return cls(keys, shapes, dtypes, tuple(offsets), num_learned, position)

    @functools.cached_property
    def segments(self) -> tuple[slice, ...]:
        """The slice of each array in the flat vector."""
        sizes = (int(np.prod(shape, dtype=np.int64)) for shape in self.shapes)
        return tuple(slice(offset, offset + size) for offset, size in zip(self.offsets, sizes, strict=True))

    @functools.cached_property
    def is_learned(self) -> tuple[bool, ...]:
        """Whether each array is a learned weight (floating-point, not a running statistic)."""
        return tuple(is_learned(key, dtype) for key, dtype in zip(self.keys, self.dtypes, strict=True))

    def learned_segments(self) -> Iterator[tuple[str, tuple[int, ...], slice]]:
        """(key, shape, slice) of each learned weight array, in key order."""
        for index, key in enumerate(self.keys):
            if self.is_learned[index]:
                yield key, self.shapes[index], self.segments[index]

    def write(self, record: ArrayRecord, out: torch.Tensor, minus: torch.Tensor | None = None) -> float:
        """Copy ``record`` (minus the flat vector ``minus``, if given) into the flat float32 vector ``out``.

        Returns the squared L2 norm of the learned weights written, taken array by array
        while each array is still in cache (float32 dot products summed in float64).
        """
        if set(record.keys()) != set(self.keys):
            raise KeyError(f"array keys differ from the global model's: {sorted(set(record.keys()) ^ set(self.keys))}")
        target = out.numpy()  # shares memory with ``out``
        subtrahend = None if minus is None else minus.numpy()
        squared_norm = 0.0
        for key, shape, segment, learned in zip(self.keys, self.shapes, self.segments, self.is_learned, strict=True):
            values = array_view(record[key])
            if values.shape != shape:
                raise ValueError(f"array '{key}' has shape {values.shape}, the global model {shape}")
            written = target[segment]
            if subtrahend is None:
                written[:] = values.reshape(-1)
            else:
                np.subtract(values.reshape(-1), subtrahend[segment], out=written, casting="unsafe")
            if learned:
                squared_norm += float(np.dot(written, written))
        return squared_norm

    def flatten(self, record: ArrayRecord) -> torch.Tensor:
        """``record`` as one float32 vector."""
        out = torch.empty(self.size, dtype=torch.float32)
        self.write(record, out)
        return out

    def stack(
        self, records: Sequence[ArrayRecord], minus: torch.Tensor | None = None, out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``records`` (each minus ``minus``, if given) as a ``(len(records), size)`` float32 matrix.

        Written into ``out`` if given (it must have that shape). Also returns each row's
        L2 norm over the learned weights (float64).
        """
        if out is None:
            out = torch.empty(len(records), self.size, dtype=torch.float32)
        if tuple(out.shape) != (len(records), self.size):
            raise ValueError(f"out has shape {tuple(out.shape)}, needs {(len(records), self.size)}")
        squared_norms = [self.write(record, row, minus) for row, record in zip(out, records, strict=True)]
        return out, torch.tensor(squared_norms, dtype=torch.float64).sqrt()

    def to_arrayrecord(self, vector: torch.Tensor) -> ArrayRecord:
        """The flat ``vector`` back as an ArrayRecord with the original keys, shapes and dtypes."""
        flat = vector.detach().cpu().numpy()
        arrays = {}
        for index, key in enumerate(self.keys):
            values = flat[self.segments[index]].reshape(self.shapes[index])
            dtype = self.dtypes[index]
            if not np.issubdtype(dtype, np.floating):
                values = np.rint(values)
            arrays[key] = Array(np.asarray(values.astype(dtype)))  # astype copies; asarray keeps 0-d an array
        return ArrayRecord(arrays)


class UpdateMatrixBuffer:
    """The memory of the ``(clients x parameters)`` update matrix, kept from round to round.

    Allocating the matrix afresh every round makes the operating system hand over and
    zero every page of it again: for 100 ResNet-18 updates (4.5 GB) that first touch
    cost ~10 s on a 2-core VM, against ~0.4 s to overwrite memory already owned
    (``benchmarks/aggregation.py``). A strategy keeps one buffer; it grows when a round
    has more clients or the model changes size, and is never shrunk.
    """

    def __init__(self) -> None:
        self._storage: torch.Tensor | None = None

    def rows(self, num_rows: int, num_columns: int) -> torch.Tensor:
        """A ``(num_rows, num_columns)`` float32 matrix over the kept memory (contents undefined)."""
        if self._storage is None or self._storage.shape[0] < num_rows or self._storage.shape[1] != num_columns:
            self._storage = None  # release the old memory before taking the new
            self._storage = torch.empty(num_rows, num_columns, dtype=torch.float32)
        return self._storage[:num_rows]


@dataclass
class UpdateBatch:
    """One round's client updates, flattened once.

    ``updates[i]`` is client ``i``'s model minus the global model; rows follow
    the reply order. ``learned`` is the view of the learned weights that
    defences operate on, ``learned_norms`` its rows' L2 norms (float64). The
    matrix may be a reused buffer: no defence keeps a view of it past the round.
    """

    layout: ArrayLayout
    global_vector: torch.Tensor
    updates: torch.Tensor
    partition_ids: list[int]
    num_examples: torch.Tensor
    records: list[ArrayRecord]
    learned_norms: torch.Tensor

    @classmethod
    def from_contents(
        cls,
        contents: Sequence[RecordDict],
        global_arrays: ArrayRecord,
        weighted_by_key: str = NUM_EXAMPLES_KEY,
        buffer: UpdateMatrixBuffer | None = None,
    ) -> UpdateBatch:
        """Flatten the replies' ArrayRecords and subtract the global model (into ``buffer``'s memory, if given)."""
        layout = ArrayLayout.of(global_arrays)
        records = [cast(ArrayRecord, next(iter(content.array_records.values()))) for content in contents]
        global_vector = layout.flatten(global_arrays)
        out = None if buffer is None else buffer.rows(len(records), layout.size)
        updates, learned_norms = layout.stack(records, minus=global_vector, out=out)
        num_examples = torch.tensor(
            [float(cast(float, next(iter(c.metric_records.values()), MetricRecord())[weighted_by_key])) for c in contents],
            dtype=torch.float64,
        )
        return cls(layout, global_vector, updates, partition_ids_of(contents), num_examples, records, learned_norms)

    @property
    def num_clients(self) -> int:
        return self.updates.shape[0]

    @property
    def learned(self) -> torch.Tensor:
        """The learned-weight coordinates of every update (a view, no copy)."""
        return self.updates[:, : self.layout.num_learned]

    @property
    def learned_global(self) -> torch.Tensor:
        """The global model's learned weights, flat (what ``learned`` rows are updates of)."""
        return self.global_vector[: self.layout.num_learned]

    @property
    def example_weights(self) -> torch.Tensor:
        """Each client's share of the round's training examples (FedAvg weights), float32."""
        return (self.num_examples / self.num_examples.sum()).to(torch.float32)

    def flatten_like(self, record: ArrayRecord) -> torch.Tensor:
        """Another model (e.g. the server's root model) as an update against the global model."""
        return self.layout.flatten(record).sub_(self.global_vector)

    def to_arrays(self, update: torch.Tensor, accepted: torch.Tensor) -> ArrayRecord:
        """The new global model: global + ``update`` on the learned weights.

        The tail (running statistics, integer counters) moves by the coordinate-wise
        median update of the ``accepted`` clients (and stays put if none was accepted).
        """
        vector = self.global_vector.clone()
        num_learned = self.layout.num_learned
        vector[:num_learned] += update
        if num_learned < self.layout.size and bool(accepted.any()):
            vector[num_learned:] += coordinatewise_median(self.updates[accepted, num_learned:])
        return self.layout.to_arrayrecord(vector)


def coordinatewise_median(rows: torch.Tensor) -> torch.Tensor:
    """The median of every column of ``rows`` as ``np.median`` takes it: the middle value, or
    the mean of the two middle values for an even number of rows."""
    ordered = rows.sort(dim=0).values
    middle = rows.shape[0] // 2
    if rows.shape[0] % 2:
        return ordered[middle].clone()
    return (ordered[middle - 1] + ordered[middle]) / 2


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """``x @ x.T`` (one float32 matrix product over all clients), returned as float64."""
    return (x @ x.T).double()


def pairwise_sq_distances(x: torch.Tensor, gram: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``x`` (float64, zero diagonal)."""
    gram = gram_matrix(x) if gram is None else gram
    norms = gram.diagonal()
    distances = (norms[:, None] + norms[None, :] - 2.0 * gram).clamp_(min=0.0)
    distances.fill_diagonal_(0.0)
    return distances


def cosine_similarity_matrix(x: torch.Tensor, gram: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarities between the rows of ``x`` (float64); a zero row is similar to nothing."""
    return cosines_from_inner_products(gram_matrix(x) if gram is None else gram)


def cosines_from_inner_products(inner: torch.Tensor) -> torch.Tensor:
    """Cosine similarities from a matrix of inner products (a Gram matrix), clamped to [-1, 1]."""
    norms = inner.diagonal().clamp(min=0.0).sqrt()
    denominator = norms[:, None] * norms[None, :]
    cosines = torch.where(denominator > 0, inner / denominator.clamp(min=1e-300), torch.zeros_like(inner))
    return cosines.clamp_(-1.0, 1.0)


def cosine_distances(
    rows: torch.Tensor, origin: torch.Tensor | None = None, gram: torch.Tensor | None = None
) -> torch.Tensor:
    """Cosine distances between the rows of ``rows`` or, given ``origin``, between the models
    ``origin + rows[i]`` (float64, zero diagonal).

    Local models share the global model, so their cosine distances are tiny (~1e-4 here) and a
    float32 Gram matrix of whole models would bury them in rounding. They are taken instead from
    the updates' Gram matrix, the updates' products with ``origin`` (float64, block by block) and
    ``|origin|^2``: ``w_i . w_j = |o|^2 + u_i . o + u_j . o + u_i . u_j``.
    """
    inner = gram_matrix(rows) if gram is None else gram
    if origin is not None:
        origin64 = origin.double()
        along = torch.zeros(rows.shape[0], dtype=torch.float64)
        for block in column_blocks(rows.shape[1]):
            along += rows[:, block].double() @ origin64[block]
        inner = origin64.dot(origin64) + along[:, None] + along[None, :] + inner
    return (1.0 - cosines_from_inner_products(inner)).fill_diagonal_(0.0)


def clip_factors(norms: torch.Tensor, bound: float | torch.Tensor) -> torch.Tensor:
    """``min(1, bound / norm)`` per row: the factor that clips a vector to ``bound`` (1 for a zero vector)."""
    bound = torch.as_tensor(bound, dtype=norms.dtype)
    return torch.where(norms > bound, bound / norms.clamp(min=torch.finfo(norms.dtype).tiny), torch.ones_like(norms))


def column_blocks(num_columns: int, block: int = 1 << 16) -> Iterator[slice]:
    """Column slices of at most ``block`` coordinates: bounded, cache-sized temporaries in coordinate-wise rules."""
    for start in range(0, num_columns, block):
        yield slice(start, min(start + block, num_columns))


def distances_to(points: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of every row of ``points`` to ``center`` (float64).

    Exact differences (no ``|x|^2 - 2x.c + |c|^2`` cancellation), taken in cache-sized
    column blocks whose squared norms are accumulated in float64.
    """
    squared = torch.zeros(points.shape[0], dtype=torch.float64)
    for block in column_blocks(points.shape[1]):
        squared += torch.linalg.vector_norm(points[:, block] - center[block], dim=1).double().square()
    return squared.sqrt()


def median_clipped_mean(updates: torch.Tensor, accepted: torch.Tensor, norms: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean of the ``accepted`` updates, each clipped to the median norm of all updates (FLAME, DeepSight).

    Returns the mean and the clipping bound. ``norms`` are the updates' L2 norms.
    """
    bound = torch.quantile(norms.double(), 0.5)
    coefficients = accepted.double() * clip_factors(norms.double(), bound) / accepted.sum().clamp(min=1)
    return coefficients.to(updates.dtype) @ updates, float(bound)
