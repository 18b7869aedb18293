"""Datasets (registered by name) and their partitioning across clients."""

from flowerbed.workloads.image_classification.data import digits_rgb, torchvision_sets  # noqa: F401  (registration)
from flowerbed.workloads.image_classification.data.base import ImageDataset, load_dataset  # noqa: F401

