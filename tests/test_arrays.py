"""Reading Flower Arrays without copies (platform/arrays.py) gives what Array.numpy() gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array
from flwr.common.constant import SType

from flowerbed.platform.arrays import _parse_npy_header, array_view


def npy_array(values: np.ndarray, version: tuple[int, int]) -> Array:
    """An Array whose bytes are ``values`` saved in the given ``.npy`` format version."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, values, version=version)
    return Array(dtype=str(values.dtype), shape=tuple(values.shape), stype=SType.NUMPY, data=buffer.getvalue())


VALUES = {
    "float32 matrix": np.arange(12, dtype=np.float32).reshape(3, 4),
    "int64 scalar": np.array(7, dtype=np.int64),
    "empty float64": np.zeros((0, 3), dtype=np.float64),
    "big-endian float64": np.arange(5, dtype=">f8"),
    "float16 conv kernel": np.linspace(-1, 1, 2 * 3 * 3 * 3, dtype=np.float16).reshape(2, 3, 3, 3),
}


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("name", list(VALUES))
def test_array_view_equals_numpy(name, version):
    array = npy_array(VALUES[name], version)
    view = array_view(array)
    expected = array.numpy()
    assert view.dtype == expected.dtype and view.shape == expected.shape
    np.testing.assert_array_equal(view, expected)


def test_array_view_shares_the_bytes_and_is_read_only():
    array = Array(np.arange(6, dtype=np.float32).reshape(2, 3))
    view = array_view(array)
    assert not view.flags.writeable
    assert np.shares_memory(view, np.frombuffer(array.data, dtype=np.uint8))


def test_fortran_order_falls_back_to_a_copy_in_the_right_order():
    values = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    view = array_view(npy_array(values, (1, 0)))
    np.testing.assert_array_equal(view, values)


def test_each_header_is_parsed_once():
    """Every client's copy of a layer carries the same header: it is parsed once, then looked up."""
    first = Array(np.full((4, 5), 1.0, dtype=np.float32))
    second = Array(np.full((4, 5), 2.0, dtype=np.float32))
    array_view(first)
    misses = _parse_npy_header.cache_info().misses
    np.testing.assert_array_equal(array_view(second), np.full((4, 5), 2.0, dtype=np.float32))
    assert _parse_npy_header.cache_info().misses == misses
