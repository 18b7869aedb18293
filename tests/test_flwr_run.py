"""The main way users launch: `flwr run .` (through scripts/flwr-local.sh) with the tiny experiment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("flwr") is None, reason="the flwr command is not installed")
def test_flwr_run_a_user_attack_from_the_app_directory(tmp_path, cache_dir):
    """docs/custom-attacker.md's `flwr run` recipe: the module beside pyproject.toml, listed
    in `plugins`, its keys declared by `flowerbed config --pyproject --set plugins=...`."""
    app = tmp_path / "app"
    app.mkdir()
    shutil.copytree(ROOT / "scripts", app / "scripts")
    shutil.copy(ROOT / "docs" / "examples" / "my_attacks.py", app)
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": "39193",
        "FLOWERBED_CACHE": cache_dir,
        "PYTHONPATH": str(app),
    }
    block = subprocess.run(
        [sys.executable, "-m", "flowerbed.cli", "config", "--pyproject", "--set", "plugins=my_attacks"],
        cwd=app, env=env, capture_output=True, text=True, check=True,
    ).stdout
    pyproject = (ROOT / "pyproject.toml").read_text()
    start = pyproject.index("[tool.flwr.app.config]")
    assert pyproject.find("\n[", start) == -1, "the config table is no longer pyproject.toml's last"
    (app / "pyproject.toml").write_text(pyproject[:start] + block)

    overrides = (
        "num-server-rounds=2 num-clients=3 fraction-train=1.0 data.train-size=600 data.test-size=200 partition.name='iid'"
        f" output-dir='{tmp_path / 'runs'}' attack.name='my-attack' attack.num-attackers=1 attack.targets=9"
        " attack.my-attack.source-class=3 attack.my-attack.boost=3.0"
    )
    result = subprocess.run(
        [str(app / "scripts" / "flwr-local.sh"), "--run-config", overrides],
        cwd=tmp_path, env={**env, "PYTHONPATH": ""}, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").glob("default-*")
    attacker = next(iter(json.loads((run_dir / "attackers.json").read_text())["attackers"].values()))
    assert attacker["attack"] == "my-attack" and attacker["source_classes"] == [3]
    assert attacker["params"]["boost"] == 3.0
    assert "my-attack-0" in json.loads((run_dir / "summary.json").read_text())["backdoors"]


@pytest.mark.parametrize(
    "overrides, key",
    [("num-clients=2 num-server-rounds=-3", "num-server-rounds"), ("num-clients=2 backend.client-cpus=0.5", "backend.client-cpus")],
)
def test_flwr_run_bad_config_fails_with_the_key_before_a_superlink_starts(tmp_path, overrides, key):
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": "39192"}
    result = subprocess.run(
        [str(ROOT / "scripts" / "flwr-local.sh"), "--run-config", overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"key '{key}'" in result.stderr
    assert "SuperLink" not in result.stdout + result.stderr  # refused before anything started


@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="the flower-superlink command is not installed")
def test_a_taken_port_is_named_with_the_superlinks_own_error(tmp_path):
    """Something that is not a SuperLink holds the port: the SuperLink cannot bind, and the
    script says why in the SuperLink's own words instead of a bare "died"."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port)}
        result = subprocess.run(
            [str(ROOT / "scripts" / "flwr-local.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 1
    assert f"flower-superlink died on port {port}" in result.stderr
    assert "address already in use" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flwr") is None, reason="the flwr command is not installed")
def test_bare_flwr_run_as_a_flower_user_types_it(tmp_path, cache_dir):
    """`flwr run . --stream` with only `--run-config` keys, no script: Flower 1.42 starts its own
    local SuperLink, installs the app's dependencies into a fresh environment for the run (uv
    sync; torch is several GB the first time) and leaves that SuperLink running when the run
    ends. The run works; this test then stops the SuperLink it caused, as README tells users to."""
    home = tmp_path / "flwr-home"
    output = tmp_path / "runs"
    port = "39195"
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": port, "FLOWERBED_CACHE": cache_dir}
    keys = f'num-server-rounds=1 num-clients=2 data.train-size=400 data.test-size=40 output-dir="{output}"'
    try:
        result = subprocess.run(
            ["flwr", "run", ".", "--stream", "--run-config", keys],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "round   1/1" in result.stdout
        (run_dir,) = output.glob("default-*")
        assert json.loads((run_dir / "summary.json").read_text())["rounds_completed"] == 1
        running = subprocess.run(["pgrep", "-f", f"flower-superlink.*{home}"], capture_output=True, text=True)
        assert running.stdout.strip(), "Flower 1.42 keeps its local SuperLink running after a bare `flwr run`"
    finally:
        subprocess.run(["pkill", "-f", str(home)], check=False)  # the SuperLink, its SuperExec and any run
        for _ in range(50):
            if not subprocess.run(["pgrep", "-f", str(home)], capture_output=True).stdout:
                break
            time.sleep(0.2)
        shutil.rmtree(home / "runtime-envs", ignore_errors=True)  # the per-run environment (GBs)
    assert not subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout, "processes left behind"
