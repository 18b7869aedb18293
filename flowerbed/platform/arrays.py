"""Reading Flower ``Array`` data without copies."""

from __future__ import annotations

import io
import math

import numpy as np
from flwr.app import Array
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
