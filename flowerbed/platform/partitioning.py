"""Split a dataset's training labels across clients with flwr-datasets partitioners.

Only indices are partitioned: an in-memory ``datasets.Dataset`` with an ``idx``
and a ``label`` column goes through the partitioner, and each client gets the
``idx`` values of its partition. Deterministic per seed.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import torch

from flowerbed.platform.registry import PARTITIONERS


@PARTITIONERS.register("iid")
def iid_partitioner(num_partitions: int, partition_config, seed: int):
    """Uniformly at random, equal sizes (IidPartitioner over a seeded shuffle)."""
    from flwr_datasets.partitioner import IidPartitioner

    return IidPartitioner(num_partitions=num_partitions)


@PARTITIONERS.register("dirichlet")
def dirichlet_partitioner(num_partitions: int, partition_config, seed: int):
    """Label skew: each class split across clients by Dirichlet(alpha) proportions."""
    from flwr_datasets.partitioner import DirichletPartitioner

    return DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=partition_config.alpha,
        min_partition_size=partition_config.min_size,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )


@PARTITIONERS.register("pathological")
def pathological_partitioner(num_partitions: int, partition_config, seed: int):
    """Each client holds only ``classes-per-client`` classes."""
    from flwr_datasets.partitioner import PathologicalPartitioner

    return PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=partition_config.classes_per_client,
        class_assignment_mode="deterministic",
        shuffle=True,
        seed=seed,
    )


def partition_indices(labels: torch.Tensor, num_partitions: int, partition_config, seed: int) -> list[np.ndarray]:
    """The training indices of every partition (list indexed by partition id)."""
    key = (labels.numpy().tobytes(), num_partitions, tuple(sorted(partition_config.model_dump().items())), seed)
    return list(_partition_indices_cached(key))


@lru_cache(maxsize=8)
def _partition_indices_cached(key) -> tuple[np.ndarray, ...]:
    label_bytes, num_partitions, config_items, seed = key
    from datasets import Dataset

    from flowerbed.platform.config import PartitionConfig

    partition_config = PartitionConfig(**dict(config_items))
    labels = np.frombuffer(label_bytes, dtype=np.int64)
    table = Dataset.from_dict({"idx": np.arange(len(labels)), "label": labels})
    if partition_config.name == "iid":
        table = table.shuffle(seed=seed).flatten_indices()
    partitioner = PARTITIONERS.get(partition_config.name)(num_partitions, partition_config, seed)
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():  # Dirichlet's resampling warns on every failed try; the error says it once
            warnings.simplefilter("ignore", UserWarning)
            parts = tuple(
                np.sort(np.asarray(partitioner.load_partition(pid)["idx"], dtype=np.int64))
                for pid in range(num_partitions)
            )
    except ValueError as error:
        raise ValueError(f"key 'partition.name'={partition_config.name!r} cannot split the data: {error}") from None
    return parts
