"""The main way users launch: `flwr run .` (through scripts/flwr-local.sh) with the tiny experiment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("flwr") is None, reason="the flwr command is not installed")
def test_flwr_run_tiny_experiment(tmp_path, cache_dir):
    output = tmp_path / "runs"
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": "39191",
        "FLOWERBED_CACHE": cache_dir,
    }
    # `flwr run` takes either a TOML file or key=value pairs, not both: extend the file.
    experiment = tmp_path / "tiny.toml"
    experiment.write_text((ROOT / "experiments" / "tiny.toml").read_text() + f'\noutput-dir = "{output}"\n')
    result = subprocess.run(
        [str(ROOT / "scripts" / "flwr-local.sh"), "--run-config", str(experiment)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "round   2/2" in result.stdout  # per-round progress reaches the user
    (run_dir,) = output.glob("tiny-*")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    config = json.loads((run_dir / "config.json").read_text())
    assert config["num-clients"] == 4
    leftover = subprocess.run(["pgrep", "-f", "flower-superlink.*39191"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "the SuperLink was left running"


def test_flwr_run_bad_config_fails_with_the_key(tmp_path):
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": "39192"}
    result = subprocess.run(
        [str(ROOT / "scripts" / "flwr-local.sh"), "--run-config", "num-clients=2 num-server-rounds=-3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode != 0
    assert "num-server-rounds" in result.stdout + result.stderr
