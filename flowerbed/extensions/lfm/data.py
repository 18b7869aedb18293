"""Offline datasets for Local Flow Matching: 2-D toy densities, scikit-learn's bundled tabular
sets and digits, or a local CSV/NPY file.

Every dataset is split (seeded) into train and test, then standardised with the training
mean and standard deviation (features with zero spread are only centred), so the OU times
h_n mean the same on every dataset (Xu et al., arXiv:2410.02548, tabular preprocessing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn import datasets as sk_datasets

TOY_DATASETS: tuple[str, ...] = ("moons", "circles", "eight-gaussians", "checkerboard", "swiss-roll")
BUNDLED_DATASETS: tuple[str, ...] = ("breast-cancer", "wine", "diabetes", "digits")
DATASETS: tuple[str, ...] = TOY_DATASETS + BUNDLED_DATASETS + ("file",)


@dataclass(frozen=True)
class SplitData:
    """Standardised float32 train and test tensors plus the statistics that standardised them."""

    train: torch.Tensor
    test: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor

    @property
    def dim(self) -> int:
        return self.train.shape[1]


def _toy(name: str, num_samples: int, noise: float, rng: np.random.RandomState) -> np.ndarray:
    if name == "moons":
        return sk_datasets.make_moons(num_samples, noise=noise, random_state=rng)[0]
    if name == "circles":
        return sk_datasets.make_circles(num_samples, noise=noise, factor=0.5, random_state=rng)[0]
    if name == "swiss-roll":
        return sk_datasets.make_swiss_roll(num_samples, noise=noise, random_state=rng)[0][:, [0, 2]]
    if name == "eight-gaussians":
        angles = 2.0 * np.pi * rng.randint(0, 8, num_samples) / 8.0
        centres = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return centres + noise * rng.randn(num_samples, 2)
    if name == "checkerboard":
        # 8 unit squares of a 4x4 board on [-2, 2]^2, alternating colours.
        x = rng.uniform(-2.0, 2.0, num_samples)
        y = rng.uniform(0.0, 1.0, num_samples) - 2.0 * rng.randint(0, 2, num_samples) + np.floor(x) % 2
        return np.stack([x, y], axis=1) + noise * rng.randn(num_samples, 2)
    raise ValueError(f"unknown toy dataset {name!r}; choose one of {TOY_DATASETS}")


def _bundled(name: str) -> np.ndarray:
    loaders = {
        "breast-cancer": sk_datasets.load_breast_cancer,
        "wine": sk_datasets.load_wine,
        "diabetes": sk_datasets.load_diabetes,
        "digits": sk_datasets.load_digits,
    }
    if name not in loaders:
        raise ValueError(f"unknown bundled dataset {name!r}; choose one of {BUNDLED_DATASETS}")
    return loaders[name](return_X_y=True)[0]


def load_array_file(path: str | Path, key: str = "data-path") -> np.ndarray:
    """A numeric (n, d) array from a ``.npy`` or ``.csv`` file (a non-numeric header row is skipped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{key}: no file at '{path}'. Put a numeric table there (rows = samples, columns = features) "
            f"as .npy (a 2-D float array) or .csv (comma-separated, optional header row)."
        )
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix == ".csv":
        array = np.genfromtxt(path, delimiter=",", dtype=np.float64)
        if array.ndim == 2 and len(array) > 0 and np.isnan(array[0]).all():
            array = array[1:]  # header row
    else:
        raise ValueError(f"{key}: '{path}' must end in .npy or .csv")
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{key}: '{path}' must hold a 2-D table, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{key}: '{path}' has missing or non-numeric values")
    return array


def load_split(
    name: str,
    *,
    num_samples: int,
    noise: float,
    test_fraction: float,
    seed: int,
    data_path: str = "",
) -> SplitData:
    """Load dataset ``name``, split it with a seeded shuffle and standardise both parts with train stats.

    ``num_samples`` and ``noise`` apply to the toy generators only; bundled and file data use all rows.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test-fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.RandomState(seed)
    if name in TOY_DATASETS:
        array = _toy(name, num_samples, noise, rng)
    elif name in BUNDLED_DATASETS:
        array = _bundled(name)
    elif name == "file":
        if not data_path:
            raise ValueError("dataset 'file' needs data-path (a local .npy or .csv table)")
        array = load_array_file(data_path)
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    order = rng.permutation(len(array))
    num_test = int(round(test_fraction * len(array)))
    if num_test < 2 or len(array) - num_test < 2:
        raise ValueError(
            f"dataset {name!r} has {len(array)} rows: too few for test-fraction {test_fraction} "
            f"(need at least 2 train and 2 test rows)"
        )
    test = torch.as_tensor(array[order[:num_test]], dtype=torch.float64)
    train = torch.as_tensor(array[order[num_test:]], dtype=torch.float64)
    mean, scale = train.mean(dim=0), train.std(dim=0)
    scale = torch.where(scale > 1e-8, scale, torch.ones_like(scale))
    return SplitData(
        train=((train - mean) / scale).float(),
        test=((test - mean) / scale).float(),
        mean=mean.float(),
        scale=scale.float(),
    )


def iid_partition(train: torch.Tensor, partition_id: int, num_partitions: int) -> torch.Tensor:
    """Partition ``partition_id`` of ``num_partitions`` IID shares of ``train`` (already shuffled by its seed).

    Uses flwr-datasets' ``IidPartitioner`` on the row indices; one partition returns all rows.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    if num_partitions > len(train):
        raise ValueError(f"{num_partitions} partitions for only {len(train)} training rows")
    if num_partitions == 1:
        return train
    import datasets  # Hugging Face datasets (a flwr-datasets dependency); heavy, so imported on use
    from flwr_datasets.partitioner import IidPartitioner

    partitioner = IidPartitioner(num_partitions=num_partitions)
    partitioner.dataset = datasets.Dataset.from_dict({"row": np.arange(len(train))})
    rows = partitioner.load_partition(partition_id).with_format("numpy")["row"]
    return train[torch.as_tensor(np.asarray(rows), dtype=torch.long)]
