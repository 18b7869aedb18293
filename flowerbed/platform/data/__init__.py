"""Datasets (registered by name) and their partitioning across clients."""

from flowerbed.platform.data import digits_rgb, torchvision_sets  # noqa: F401  (registration)
from flowerbed.platform.data.base import ImageDataset, load_dataset  # noqa: F401
from flowerbed.platform.data import partition  # noqa: F401,E402  (registration)
