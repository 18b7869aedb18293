"""Real image datasets through torchvision, from a local folder only (``download=False``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flowerbed.platform.registry import DATASETS
from flowerbed.workloads.image_classification.data.base import ImageDataset

# name -> (torchvision class name, classes, image shape, split keyword, where the files go)
_SOURCES = {
    "cifar10": ("CIFAR10", 10, (3, 32, 32), "train", "<data.root>/cifar-10-batches-py/ (the python version from the CIFAR-10 site)"),
    "mnist": ("MNIST", 10, (1, 28, 28), "train", "<data.root>/MNIST/raw/ (the four *-ubyte files)"),
    "fashion-mnist": ("FashionMNIST", 10, (1, 28, 28), "train", "<data.root>/FashionMNIST/raw/ (the four *-ubyte files)"),
    "gtsrb": ("GTSRB", 43, (3, 32, 32), "split", "<data.root>/gtsrb/GTSRB/Training and Final_Test (the official archives, unpacked)"),
}

# Datasets whose training files come in class order (torchvision's GTSRB walks its class
# folders): shuffled once with a fixed seed, so that any slice of them, such as the root data
# the server keeps (the last ``data.server-size`` images), holds every class.
_STORED_BY_CLASS = {"gtsrb"}


def _load(name: str, data_config) -> ImageDataset:
    import torchvision
    from torchvision.transforms import functional as TF

    class_name, num_classes, shape, split_kind, where = _SOURCES[name]
    if not data_config.root:
        raise FileNotFoundError(f"dataset '{name}' needs key 'data.root': a folder with {where}")
    root = Path(data_config.root).expanduser()
    cls = getattr(torchvision.datasets, class_name)
    splits = []
    for train in (True, False):
        kwargs = {"train": train} if split_kind == "train" else {"split": "train" if train else "test"}
        try:
            dataset = cls(root=str(root), download=False, **kwargs)
        except (RuntimeError, FileNotFoundError) as error:
            raise FileNotFoundError(
                f"dataset '{name}' not found under data.root={root}: put {where} there ({error})"
            ) from None
        splits.append(_to_tensors(dataset, shape, TF))
    (train_x, train_y), (test_x, test_y) = splits
    if name in _STORED_BY_CLASS:
        order = torch.from_numpy(np.random.default_rng(0).permutation(len(train_y)))
        train_x, train_y = train_x[order], train_y[order]
    return ImageDataset(train_x, train_y, test_x, test_y, num_classes=num_classes)


def _to_tensors(dataset, shape, TF) -> tuple[torch.Tensor, torch.Tensor]:
    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", None)
    if data is not None and targets is not None:  # CIFAR/MNIST keep everything in memory already
        images = torch.as_tensor(np.asarray(data))
        if images.ndim == 3:
            images = images[:, None]
        elif images.shape[-1] in (1, 3):
            images = images.permute(0, 3, 1, 2)
        return images.contiguous().to(torch.uint8), torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    images, labels = [], []
    for image, label in dataset:  # GTSRB: PIL images of varying size
        image = TF.resize(image.convert("RGB"), list(shape[1:]))
        images.append(TF.pil_to_tensor(image))
        labels.append(label)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _register(name: str) -> None:
    _, num_classes, shape, _, _ = _SOURCES[name]

    @DATASETS.register(name)
    class TorchvisionSource:
        __doc__ = f"torchvision's {name} read from ``data.root`` (never downloaded)."

    TorchvisionSource.num_classes = num_classes
    TorchvisionSource.image_shape = shape
    TorchvisionSource.load = staticmethod(lambda data_config: _load(name, data_config))
    TorchvisionSource.__name__ = f"Torchvision_{name.replace('-', '_')}"


for _name in _SOURCES:
    _register(_name)
