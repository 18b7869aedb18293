"""Client partitions: flwr-datasets' partitioners, kept on disk for the next process that needs them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowerbed.platform import partitioning
from flowerbed.platform.config import PartitionConfig


@pytest.mark.parametrize("name", ["iid", "dirichlet", "pathological"])
def test_partitions_read_back_from_disk_equal_the_computed_ones(tmp_path, name):
    labels = torch.arange(600) % 10
    config = PartitionConfig(name=name, **{"min-size": 5})
    computed = partitioning.partition_indices(labels, 12, config, seed=3)
    first = partitioning.partition_indices(labels, 12, config, seed=3, cache_dir=tmp_path)
    (stored,) = (tmp_path / "partitions").glob("*.npz")
    partitioning._partition_indices_on_disk.cache_clear()
    partitioning._partition_indices_cached.cache_clear()
    again = partitioning.partition_indices(labels, 12, config, seed=3, cache_dir=tmp_path)
    for parts in (first, again):
        assert len(parts) == 12 and all(np.array_equal(a, b) for a, b in zip(parts, computed, strict=True))
    assert sorted(np.concatenate(again).tolist()) == list(range(600))  # every image once
    # Another seed or size is another file.
    partitioning.partition_indices(labels, 12, config, seed=4, cache_dir=tmp_path)
    partitioning.partition_indices(labels, 11, config, seed=3, cache_dir=tmp_path)
    assert len(list((tmp_path / "partitions").glob("*.npz"))) == 3
    assert stored.exists()


def test_a_torn_partition_file_is_computed_again(tmp_path):
    labels = torch.arange(300) % 10
    config = PartitionConfig(name="iid")
    expected = partitioning.partition_indices(labels, 7, config, seed=0, cache_dir=tmp_path)
    (stored,) = (tmp_path / "partitions").glob("*.npz")
    stored.write_bytes(stored.read_bytes()[:40])
    partitioning._partition_indices_on_disk.cache_clear()
    parts = partitioning.partition_indices(labels, 7, config, seed=0, cache_dir=tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(parts, expected, strict=True))
    with np.load(stored) as rewritten:
        assert len(rewritten["offsets"]) == 8
