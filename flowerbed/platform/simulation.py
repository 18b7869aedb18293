"""Run an experiment in-process with Flower's simulation engine (``run_simulation``).

This is what ``flowerbed run``, the tests and ``flowerbed bench`` use. The
validated config reaches the ServerApp through :func:`make_server_app` and the
clients through every message, since ``run_simulation`` passes no run config.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from flowerbed.platform.config import ConfigError, RunConfig, parse_run_config
from flowerbed.platform.initial_model import initial_weights_path
from flowerbed.platform.run_parts import build_run
from flowerbed.platform.server_app import RunOutcome, check_resume, make_server_app

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_DEDUP_LOGS": "0",
}
# Client actors run at the ServerApp's priority (Ray's default is nice 15); RAY_worker_niceness overrides.
WORKER_NICENESS = 0


def ray_backend_config(config: RunConfig) -> dict[str, Any]:
    """Flower's Ray backend settings from the ``backend.*`` keys: each virtual client's resources,
    and either a private Ray on this machine or an existing cluster to attach to."""
    backend = config.backend
    client_resources = {"num_cpus": backend.client_cpus, "num_gpus": backend.client_gpus}
    if backend.ray_address:  # the cluster's own resources and settings apply
        init_args: dict[str, Any] = {"address": backend.ray_address, "include_dashboard": False, "logging_level": "error"}
        return {"client_resources": client_resources, "init_args": init_args}
    cpus, gpus = os.cpu_count() or 1, local_gpu_count()
    if backend.client_cpus > cpus:
        raise ConfigError([f"key 'backend.client-cpus': {backend.client_cpus} CPUs per client, but this machine has {cpus}"])
    if backend.client_gpus > gpus:
        raise ConfigError([f"key 'backend.client-gpus': {backend.client_gpus} GPUs per client, but this machine has {gpus}"])
    # address "local": always a new Ray of this run's own, never a cluster that `ray start` left
    # on this host (Ray's discovery would otherwise join it, or hang on it once it is gone).
    init_args = {"address": "local", "num_cpus": cpus, "num_gpus": gpus, "include_dashboard": False, "logging_level": "error"}
    if "RAY_worker_niceness" not in os.environ:
        # Ray starts its workers (the client actors) at nice 15, below the ServerApp and
        # any other process: on a shared machine the clients then get a small share of the
        # CPU (benchmarks/overhead.py: rounds 2.5x slower next to two nice-10 busy loops).
        init_args["_system_config"] = {"worker_niceness": WORKER_NICENESS}
    return {"client_resources": client_resources, "init_args": init_args}


def local_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_experiment(config: RunConfig | dict[str, Any], quiet: bool = False) -> RunOutcome:
    """Simulate ``config`` (a RunConfig or flat run-config dict); return where the results went.

    Raises the ServerApp's error (a :class:`ConfigError` for bad input) if the run failed.
    """
    if not isinstance(config, RunConfig):
        config = parse_run_config(config)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    # Every check that can run before the simulation engine starts runs here, once: the
    # run's parts (a defence's bounds, triggers, the federation the data allows), a resumed
    # folder, a missing model.init. The ServerApp then uses the parts built here.
    run = build_run(config)
    if config.resume:
        check_resume(config)
    initial_weights_path(config)
    from flwr.simulation import run_simulation

    from flowerbed.platform.client_app import app as client_app

    outcome = RunOutcome()
    server_app = make_server_app(config, outcome, quiet=quiet, run=run)
    backend_config = ray_backend_config(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=config.num_clients,
            backend_config=backend_config,
        )
    if outcome.error is not None:
        raise outcome.error
    if outcome.run_dir is None:
        raise RuntimeError("the simulation ended without starting the run (see the log above)")
    return outcome
