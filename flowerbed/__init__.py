"""flowerbed: a federated-learning security testbed built on Flower."""

__version__ = "0.1.0"
