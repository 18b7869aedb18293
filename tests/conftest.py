"""Shared fixtures: a small, fast dataset cache and offline Flower settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """One dataset cache for the whole session (the digits build runs once per size)."""
    return str(tmp_path_factory.mktemp("flowerbed-cache"))


@pytest.fixture
def small_run(cache_dir, tmp_path) -> dict:
    """Flat run-config keys for a tiny, fast simulation."""
    return {
        "num-server-rounds": 3,
        "num-clients": 4,
        "fraction-train": 1.0,
        "local-epochs": 2,
        "batch-size": 32,
        "lr": 0.03,
        "data.train-size": 1600,
        "data.test-size": 300,
        "data.cache-dir": cache_dir,
        "partition.name": "iid",
        "output-dir": str(tmp_path / "runs"),
        "experiment": "test",
    }


@pytest.fixture
def isolated_plugins():
    """Undo what a test's user modules register or import (the docs example registers
    'my-attack'), so later tests see only the built-in plugins."""
    import sys

    from flowerbed.platform import registry

    registry.load_plugins()
    registries = [value for value in vars(registry).values() if isinstance(value, registry.Registry)]
    entries = {id(r): dict(r._entries) for r in registries}
    modules = set(sys.modules)
    yield
    for r in registries:
        r._entries = entries[id(r)]
    installed = (sys.prefix, sys.base_prefix, str(Path(registry.__file__).parents[1]))
    for name in set(sys.modules) - modules:
        source = getattr(sys.modules[name], "__file__", None) or ""
        if source and not source.startswith(installed):  # the test's own modules, not libraries
            del sys.modules[name]
