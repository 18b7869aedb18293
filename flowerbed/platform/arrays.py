"""Reading Flower ``Array`` data without copies, and the size of a client's update."""

from __future__ import annotations

import io
import math

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType

_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def array_view(array: Array) -> np.ndarray:
    """A read-only NumPy view of a Flower ``Array``'s ``.npy`` bytes, without the copy ``Array.numpy()`` makes."""
    if array.stype != SType.NUMPY:
        return array.numpy()
    stream = io.BytesIO(array.data)
    reader = _NPY_HEADER_READERS.get(np.lib.format.read_magic(stream))
    if reader is None:
        return array.numpy()
    shape, fortran_order, dtype = reader(stream)
    if fortran_order or dtype.hasobject:
        return array.numpy()
    count = math.prod(shape)
    return np.frombuffer(array.data, dtype=dtype, count=count, offset=stream.tell()).reshape(shape)


def update_norm(record: ArrayRecord, global_arrays: ArrayRecord) -> float:
    """The L2 norm of ``record - global_arrays`` over the floating-point arrays (the client's update).

    Integer arrays (e.g. BatchNorm's ``num_batches_tracked``) are left out, as the defences leave them.
    """
    squared = 0.0
    for key, reference in global_arrays.items():
        global_values = array_view(reference)
        if global_values.dtype.kind != "f":
            continue
        difference = np.subtract(array_view(record[key]), global_values, dtype=np.float64).ravel()
        squared += float(np.dot(difference, difference))
    return math.sqrt(squared)
