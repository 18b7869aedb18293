"""Where flowerbed keeps what it builds once and reuses: generated datasets, client partitions."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$FLOWERBED_CACHE``, else ``~/.cache/flowerbed``."""
    return Path(os.environ.get("FLOWERBED_CACHE", Path.home() / ".cache" / "flowerbed"))


def cache_dir_for(configured: str) -> Path:
    """The run's ``data.cache-dir`` when set, else the default."""
    return Path(configured) if configured else default_cache_dir()
