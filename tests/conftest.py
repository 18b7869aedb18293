"""Shared fixtures: a small, fast dataset cache and offline Flower settings."""

from __future__ import annotations

import os

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
