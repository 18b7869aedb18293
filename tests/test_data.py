"""digits-rgb32 and partitioning: shapes, colour, determinism, no leakage, flwr-datasets splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowerbed.platform.config import PartitionConfig, parse_run_config
from flowerbed.platform.partitioning import partition_indices
from flowerbed.workloads.image_classification.data import load_dataset
from flowerbed.workloads.image_classification.data.digits_rgb import build_digits_rgb32


@pytest.fixture(scope="module")
def digits():
    return build_digits_rgb32(train_size=600, test_size=200, seed=3)


def test_shapes_types_and_labels(digits):
    assert digits.train_images.shape == (600, 3, 32, 32)
    assert digits.test_images.shape == (200, 3, 32, 32)
    assert digits.train_images.dtype == torch.uint8
    assert set(digits.train_labels.unique().tolist()) == set(range(10))
    assert digits.num_classes == 10


def test_channels_really_differ(digits):
    images = digits.train_images.float()
    red_green = (images[:, 0] - images[:, 1]).abs().mean()
    green_blue = (images[:, 1] - images[:, 2]).abs().mean()
    assert red_green > 20 and green_blue > 20  # on the 0-255 scale: not three copies of one channel
    # Images differ from each other in colour, not only in shape.
    assert images.mean(dim=(2, 3)).std(dim=0).min() > 20


def test_build_is_deterministic_per_seed(digits):
    again = build_digits_rgb32(train_size=600, test_size=200, seed=3)
    other = build_digits_rgb32(train_size=600, test_size=200, seed=4)
    assert torch.equal(again.train_images, digits.train_images)
    assert torch.equal(again.test_labels, digits.test_labels)
    assert not torch.equal(other.train_images, digits.train_images)


def test_test_set_comes_from_held_out_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    train_idx, test_idx = train_test_split(list(range(len(labels))), test_size=0.2, stratify=labels, random_state=3)
    assert not set(train_idx) & set(test_idx)  # the split the builder uses is disjoint
    assert len(test_idx) == pytest.approx(0.2 * len(labels), abs=1)


def test_dataset_is_cached_on_disk(cache_dir):
    config = parse_run_config({"data.train-size": 300, "data.test-size": 50, "data.cache-dir": cache_dir})
    first = load_dataset(config.data)
    from pathlib import Path

    assert any(Path(cache_dir).glob("digits-rgb32-*train300-test50.pt"))
    from flowerbed.workloads.image_classification.data.digits_rgb import DigitsRGB32

    reloaded = DigitsRGB32.load(config.data)
    assert torch.equal(reloaded.train_images, first.train_images)


def test_real_dataset_without_files_says_where_to_put_them(tmp_path):
    config = parse_run_config({"data.name": "cifar10", "data.root": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset(config.data)
    config = parse_run_config({"data.name": "mnist"})
    with pytest.raises(FileNotFoundError, match="data.root"):
        load_dataset(config.data)


@pytest.mark.parametrize(
    "partition",
    [{"name": "iid"}, {"name": "dirichlet", "alpha": 0.3}, {"name": "pathological", "classes-per-client": 2}],
)
def test_partitions_are_disjoint_cover_and_reproduce(digits, partition):
    config = PartitionConfig(**partition)
    parts = partition_indices(digits.train_labels, 6, config, seed=7)
    again = partition_indices(digits.train_labels, 6, config, seed=7)
    assert len(parts) == 6
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist()))  # disjoint
    if config.name != "pathological":  # pathological may leave classes nobody was assigned
        assert sorted(joined.tolist()) == list(range(len(digits.train_labels)))  # covering
    if config.name == "pathological":
        for part in parts:
            assert len(np.unique(digits.train_labels.numpy()[part])) <= 2
    different = partition_indices(digits.train_labels, 6, config, seed=8)
    if config.name != "pathological":
        assert not all(np.array_equal(a, b) for a, b in zip(parts, different))


def test_dirichlet_skews_labels(digits):
    parts = partition_indices(digits.train_labels, 5, PartitionConfig(name="dirichlet", alpha=0.1), seed=0)
    labels = digits.train_labels.numpy()
    shares = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts if len(p)]
    assert np.mean(shares) > 0.3  # IID would give about 0.1-0.15


def test_a_dataset_stored_in_class_order_is_shuffled_so_the_servers_root_data_holds_every_class(tmp_path, monkeypatch):
    """torchvision's GTSRB lists its training images class folder by class folder; FLTrust's root
    data is the last ``data.server-size`` of them, which would otherwise all be of class 42."""
    import torchvision
    from PIL import Image

    from flowerbed.platform.registry import DATASETS

    class ClassOrderedGTSRB:  # 43 classes x 6 images, class by class; each image's pixels carry its label
        def __init__(self, root, split, download):
            labels = range(43) if split == "train" else range(3)
            self.samples = [(label, label) for label in labels for _ in range(6)]

        def __iter__(self):
            for value, label in self.samples:
                yield Image.new("RGB", (40, 36), (value, value, value)), label

    monkeypatch.setattr(torchvision.datasets, "GTSRB", ClassOrderedGTSRB)
    config = parse_run_config({"data.name": "gtsrb", "data.root": str(tmp_path)})
    dataset = DATASETS.get("gtsrb").load(config.data)
    labels = dataset.train_labels
    assert sorted(labels.tolist()) == sorted(label for label in range(43) for _ in range(6))
    assert torch.equal(dataset.train_images[:, 0, 0, 0].long(), labels)  # images moved with their labels
    assert len(set(labels[-30:].tolist())) >= 15  # the tail mixes classes (in class order: 5 classes)
    again = DATASETS.get("gtsrb").load(config.data)
    assert torch.equal(again.train_labels, labels)  # one fixed order
