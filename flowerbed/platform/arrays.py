"""Reading Flower ``Array`` data without copies, which model entries are learned weights, and the size of a client's update."""

from __future__ import annotations

import functools
import io
import math

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType

# BatchNorm's running statistics: floating-point buffers a layer measures on the data it sees,
# not weights that training learns.
RUNNING_STATISTICS = ("running_mean", "running_var")


def is_learned(key: str, dtype: np.dtype) -> bool:
    """Whether a model entry is a learned weight: floating-point and not a running statistic.

    Defences measure updates on these only (norms, distances, cosines, clipping, noise), as
    the papers define them on model parameters; running statistics follow the accepted
    clients' average and integer counters are left out.
    """
    return np.dtype(dtype).kind == "f" and not key.endswith(RUNNING_STATISTICS)


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_NPY_MAGIC = b"\x93NUMPY"


def array_view(array: Array) -> np.ndarray:
    """A read-only NumPy view of a Flower ``Array``'s ``.npy`` bytes, without the copy ``Array.numpy()`` makes."""
    if array.stype != SType.NUMPY:
        return array.numpy()
    header = _npy_header(array.data)
    parsed = None if header is None else _parse_npy_header(header)
    if parsed is None:
        return array.numpy()
    shape, dtype = parsed
    return np.frombuffer(array.data, dtype=dtype, count=math.prod(shape), offset=len(header)).reshape(shape)


def _npy_header(data: bytes) -> bytes | None:
    """The bytes of a ``.npy`` 1.0 or 2.0 header (magic string up to the array data), else None."""
    if data[:6] != _NPY_MAGIC:
        return None
    if data[6:8] == b"\x01\x00":
        return bytes(data[: 10 + int.from_bytes(data[8:10], "little")])
    if data[6:8] == b"\x02\x00":
        return bytes(data[: 12 + int.from_bytes(data[8:12], "little")])
    return None


@functools.lru_cache(maxsize=4096)
def _parse_npy_header(header: bytes) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype from a ``.npy`` header; None for Fortran order or objects.

    Cached: every client's copy of one layer has the same header, and parsing it
    (NumPy reads the header with ``ast.literal_eval``) cost more than copying the
    layer's data in a round of 100 ResNet-18 updates.
    """
    stream = io.BytesIO(header)
    reader = _NPY_HEADER_READERS[np.lib.format.read_magic(stream)]
    shape, fortran_order, dtype = reader(stream)
    if fortran_order or dtype.hasobject:
        return None
    return shape, dtype


def update_norm(record: ArrayRecord, global_arrays: ArrayRecord) -> float:
    """The L2 norm of ``record - global_arrays`` over the learned weights (the client's update).

    BatchNorm's running statistics and integer counters are left out, as the defences leave them.
    """
    squared = 0.0
    for key, reference in global_arrays.items():
        global_values = array_view(reference)
        if not is_learned(key, global_values.dtype):
            continue
        difference = np.subtract(array_view(record[key]), global_values, dtype=np.float64).ravel()
        squared += float(np.dot(difference, difference))
    return math.sqrt(squared)
