"""Datasets of the image-classification workload, registered by name (partitioning is `platform/partitioning.py`)."""

from flowerbed.workloads.image_classification.data import digits_rgb, torchvision_sets  # noqa: F401  (registration)
from flowerbed.workloads.image_classification.data.base import ImageDataset, load_dataset  # noqa: F401

