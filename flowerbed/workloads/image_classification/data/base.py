"""What a dataset gives the platform: image tensors, labels, and metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from flowerbed.platform.registry import DATASETS


@dataclass(frozen=True)
class ImageDataset:
    """A train/test split held in memory as uint8 images ``[N, C, H, W]`` and int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]


class DatasetSource(Protocol):
    """A registered dataset: metadata as class attributes, ``load`` builds the tensors."""

    num_classes: ClassVar[int]
    image_shape: ClassVar[tuple[int, int, int]]

    @staticmethod
    def load(data_config) -> ImageDataset: ...


_CACHE: dict[tuple, ImageDataset] = {}


def load_dataset(data_config) -> ImageDataset:
    """Load (once per process) the dataset that ``data_config`` names."""
    key = tuple(sorted(data_config.model_dump().items()))
    if key not in _CACHE:
        _CACHE[key] = DATASETS.get(data_config.name).load(data_config)
    return _CACHE[key]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[0, 1]``."""
    return images.float().div_(255.0)
