"""The simulation on an existing Ray cluster (`backend.ray-address`), and the client resources keys."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from flowerbed.platform.config import ConfigError, parse_run_config
from flowerbed.platform.recorder import read_metrics
from flowerbed.platform.simulation import local_gpu_count, ray_backend_config, run_experiment

PORT = 39610


def test_client_resources_beyond_this_machine_are_refused_for_a_private_ray():
    cpus = os.cpu_count() or 1
    with pytest.raises(ConfigError, match=r"key 'backend.client-cpus'"):
        ray_backend_config(parse_run_config({"backend.client-cpus": cpus + 1}))
    with pytest.raises(ConfigError, match=r"key 'backend.client-gpus'"):
        ray_backend_config(parse_run_config({"backend.client-gpus": local_gpu_count() + 1}))
    backend = ray_backend_config(parse_run_config({"backend.client-cpus": 0.5}))
    assert backend["client_resources"] == {"num_cpus": 0.5, "num_gpus": 0.0} and backend["init_args"]["num_cpus"] == cpus
    assert backend["init_args"]["address"] == "local"  # never a cluster some `ray start` left on this host
    attached = ray_backend_config(parse_run_config({"backend.ray-address": "10.0.0.5:6379", "backend.client-cpus": 64}))
    assert attached["init_args"]["address"] == "10.0.0.5:6379" and "num_cpus" not in attached["init_args"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ray") is None, reason="the ray command is not installed")
def test_a_simulation_attaches_to_a_ray_cluster_started_with_ray_start(small_run, tmp_path):
    """`ray start --head` with one CPU more than this machine has; clients that each need all of
    them can only be placed on that cluster, so a finished run shows the simulation attached to it."""
    cpus = (os.cpu_count() or 1) + 1
    # `ray start` records its cluster here for Ray's discovery and does not remove it on exit.
    current_cluster = Path("/tmp/ray/ray_current_cluster")
    recorded_before = current_cluster.read_text() if current_cluster.is_file() else None
    # --block keeps `ray start` in the foreground and stops the cluster it started when it ends;
    # `ray stop` would stop every Ray on this machine.
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--port", str(PORT), "--num-cpus", str(cpus), "--include-dashboard", "false",
         "--disable-usage-stats"],
        stdout=(tmp_path / "ray-head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        for _ in range(300):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", PORT)) == 0:
                    break
            assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-2000:]
            time.sleep(0.2)
        flat = {**small_run, "num-server-rounds": 1, "backend.ray-address": f"127.0.0.1:{PORT}", "backend.client-cpus": cpus}
        outcome = run_experiment(flat, quiet=True)
        rounds = read_metrics(Path(outcome.run_dir))
        assert len(rounds) == 1 and rounds[0]["failures"] == [] and len(rounds[0]["clients"]) == 4
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        if recorded_before is None:
            current_cluster.unlink(missing_ok=True)
        else:
            current_cluster.write_text(recorded_before)
