"""Split a dataset's training labels across clients with flwr-datasets partitioners.

Only indices are partitioned: an in-memory ``datasets.Dataset`` with an ``idx``
and a ``label`` column goes through the partitioner, and each client gets the
``idx`` values of its partition. Deterministic per seed.

Reading the partitions out of a partitioner costs one ``load_partition`` per client
(about 3 ms each: 30 s for 10,000 clients), and the ServerApp and every client
process need them, so they are kept in memory and, given a cache folder, on disk
(``partitions/<hash>.npz``, one file per labels, size, partition config and seed).
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path

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


def partition_indices(
    labels: torch.Tensor, num_partitions: int, partition_config, seed: int, cache_dir: str | Path | None = None
) -> list[np.ndarray]:
    """The training indices of every partition (list indexed by partition id); read from and
    written to ``cache_dir`` when given."""
    key = (labels.numpy().tobytes(), num_partitions, tuple(sorted(partition_config.model_dump().items())), seed)
    if cache_dir is None:
        return list(_partition_indices_cached(key))
    return list(_partition_indices_on_disk(key, str(cache_dir)))


@lru_cache(maxsize=8)
def _partition_indices_on_disk(key, cache_dir: str) -> tuple[np.ndarray, ...]:
    label_bytes, num_partitions, config_items, seed = key
    digest = hashlib.sha256(repr((hashlib.sha256(label_bytes).hexdigest(), num_partitions, config_items, seed)).encode())
    path = Path(cache_dir) / "partitions" / f"{digest.hexdigest()[:32]}.npz"
    try:
        with np.load(path) as stored:
            indices, offsets = stored["indices"], stored["offsets"]
        if len(offsets) == num_partitions + 1:
            return tuple(indices[offsets[pid] : offsets[pid + 1]] for pid in range(num_partitions))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # not there yet, or a torn or foreign file
        pass
    parts = _partition_indices_cached(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    offsets = np.cumsum([0, *(len(part) for part in parts)])
    np.savez(temporary, indices=np.concatenate(parts), offsets=offsets)
    os.replace(temporary, path)  # atomic: concurrent processes write the same content
    return parts


@lru_cache(maxsize=8)
def _partition_indices_cached(key) -> tuple[np.ndarray, ...]:
    label_bytes, num_partitions, config_items, seed = key
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    from flowerbed.platform.config import PartitionConfig

    disable_progress_bar()  # "Flattening the indices" bars from every client process
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
