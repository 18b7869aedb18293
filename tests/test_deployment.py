"""Flower's deployment engine as real processes on 127.0.0.1: a SuperLink with TLS and SuperNode
authentication, authorised SuperNodes bound to their partitions (scripts/deploy-local.sh), and
SuperNodes that must be refused (a key that is not registered, no CA)."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in ("flwr", "flower-superlink", "flower-supernode", "openssl", "ssh-keygen")),
        reason="needs flwr, flower-superlink, flower-supernode, openssl and ssh-keygen",
    ),
]
TINY_WITH_ATTACKER = """
experiment = "deployed"
num-server-rounds = 2
num-clients = 3
fraction-train = 1.0
"data.train-size" = 600
"data.test-size" = 100
"data.cache-dir" = "{cache_dir}"
"partition.name" = "iid"
"output-dir" = "{output}"
"attack.name" = "badnets"
"attack.num-attackers" = 1
"strategy.name" = "krum"
"strategy.krum.num-malicious" = 0
"""


def _without_timing(rounds: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key != "seconds"} for record in rounds]


def _read_rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _processes_of(marker: str) -> str:
    return subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout.strip()


def test_a_secured_deployment_runs_like_the_simulation_and_finishes_when_a_supernode_is_killed(tmp_path, cache_dir):
    """deploy-local.sh: TLS + authentication, 3 SuperNodes as processes, one attacker. Rounds 1-2
    match a simulated run of the same config and seed. Then one SuperNode is SIGKILLed (its whole
    session): Flower reports it unavailable after two missed 30-s heartbeats (or round-timeout
    ends the wait first), round 3 aggregates the other two and records why the third is missing,
    the run completes, and nothing is left running."""
    output = tmp_path / "deployed"
    experiment = tmp_path / "deployed.toml"
    experiment.write_text(
        TINY_WITH_ATTACKER.format(cache_dir=cache_dir, output=output).replace("num-server-rounds = 2", "num-server-rounds = 3")
        + '"min-replies" = 2\n"round-timeout" = 90\n'
    )
    home = tmp_path / "flwr-home"
    port = 39460
    deploy = subprocess.Popen(
        [str(ROOT / "scripts" / "deploy-local.sh"), "--keys", str(tmp_path / "keys"), "--port", str(port), str(experiment)],
        cwd=ROOT, env={**os.environ, "FLWR_HOME": str(home)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 400
        while len(_recorded_rounds(output)) < 2:
            assert deploy.poll() is None and time.monotonic() < deadline, "round 2 never finished"
            time.sleep(0.5)
        victim = subprocess.run(["pgrep", "-f", f"flower-supernode.*--port {port + 12}"], capture_output=True, text=True)
        (pid,) = victim.stdout.split()
        subprocess.run(["pkill", "-KILL", "-s", pid], check=True)  # SuperNode 2 and any ClientApp it runs
        stdout, _ = deploy.communicate(timeout=400)
    finally:
        if deploy.poll() is None:
            deploy.terminate()
            deploy.wait(timeout=60)
    assert deploy.returncode == 0, stdout[-3000:]
    assert "flwr run: finished:completed" in stdout
    superlink_log = (home / "logs" / "superlink.log").read_text()
    assert f"https://127.0.0.1:{port}" in superlink_log  # TLS
    assert sorted(p.name for p in (tmp_path / "keys").glob("supernode-*.pub")) == [f"supernode-{k}.pub" for k in range(3)]
    assert not _processes_of(str(home)), "processes left behind"

    (run_dir,) = output.iterdir()
    rounds = _read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    attackers = json.loads((run_dir / "attackers.json").read_text())["attackers"]
    (attacker,) = attackers
    for record in rounds[:2]:
        assert sorted(record["clients"]) == [0, 1, 2] and record["failures"] == []
        assert record["attackers"] == [int(attacker)] and set(record["asr"]) == {"badnets-0"}
        assert len(record["flagged"]) == 2 and set(record["detection"]) >= {"precision", "fpr"}
        assert set(record["local_asr"]) == {attacker}
    (failure,) = rounds[2]["failures"]
    assert failure["partition_id"] == 2, rounds[2]["failures"]
    assert "node unavailable" in failure["reason"].lower() or "round-timeout" in failure["reason"], failure
    assert "train_loss" in rounds[2] and "not_aggregated" not in rounds[2] and len(rounds[2]["flagged"]) == 1
    assert json.loads((run_dir / "summary.json").read_text())["rounds_completed"] == 3

    simulated = subprocess.run(
        [sys.executable, "-m", "flowerbed.cli", "run", str(experiment), "--quiet",
         "--set", f'output-dir="{tmp_path / "simulated"}"', "--set", "num-server-rounds=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert simulated.returncode == 0, simulated.stderr[-3000:]
    (simulated_dir,) = (tmp_path / "simulated").iterdir()
    simulated_attackers = json.loads((simulated_dir / "attackers.json").read_text())["attackers"]
    assert {pid: entry["backdoors"] for pid, entry in simulated_attackers.items()} == {
        pid: entry["backdoors"] for pid, entry in attackers.items()
    }  # the same attacker (its schedule ends at the last round: 2 there, 3 here)
    # Same machine: identical (the attack runs to the last round either way: attack.end-round = 0).
    assert _without_timing(_read_rounds(simulated_dir)) == _without_timing(rounds[:2])


def _recorded_rounds(output: Path) -> list[str]:
    files = list(output.glob("*/metrics.jsonl"))
    return files[0].read_text().splitlines() if files else []


def _start(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def test_a_supernode_with_an_unregistered_key_or_without_the_ca_is_refused(tmp_path):
    keys = tmp_path / "keys"
    subprocess.run([str(ROOT / "scripts" / "make-keys.sh"), str(keys), "1"], check=True, timeout=120)
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(keys / "rogue")], check=True)
    home = tmp_path / "flwr-home"
    home.mkdir()
    port = 39490
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{keys / "ca.crt"}"\ninsecure = false\n'
    )
    env = {**os.environ, "FLWR_HOME": str(home)}
    superlink = _start(
        ["flower-superlink", "--ssl-ca-certfile", str(keys / "ca.crt"), "--ssl-certfile", str(keys / "server.pem"),
         "--ssl-keyfile", str(keys / "server.key"), "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(port),
         "--database", str(home / "state.db"), "--disable-runtime-dependency-installation"],
        tmp_path / "superlink.log",
    )
    try:
        context = ssl.create_default_context(cafile=str(keys / "ca.crt"))
        for _ in range(100):
            try:
                urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=1, context=context)
                break
            except OSError:
                time.sleep(0.2)
        register = subprocess.run(
            ["flwr", "supernode", "register", str(keys / "supernode-0.pub"), "deploy"], env=env, capture_output=True, text=True, timeout=60
        )
        assert register.returncode == 0 and "registered successfully" in register.stdout, register.stdout + register.stderr

        def supernode(name: str, *security: str) -> tuple[int, str]:
            log = tmp_path / f"{name}.log"
            process = _start(
                ["flower-supernode", *security, "--superlink", f"127.0.0.1:{port}", "--node-config",
                 "partition-id=0 num-partitions=1", "--port", str(port + 10 + len(list(tmp_path.glob("*.log"))))],
                log,
            )
            try:
                code = process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                _stop(process)
                code = None
            return code, log.read_text()

        code, log = supernode("rogue", "--root-certificates", str(keys / "ca.crt"), "--auth-supernode-private-key", str(keys / "rogue"))
        assert code not in (0, None) and "Failed to activate SuperNode" in log and "Exit Code: 305" in log
        code, log = supernode("no-ca", "--auth-supernode-private-key", str(keys / "supernode-0"))
        assert code not in (0, None) and "CERTIFICATE_VERIFY_FAILED" in log
        # Neither ever joined: the one registered node never came online, nobody else is known.
        listing = subprocess.run(["flwr", "supernode", "list", "deploy", "--format", "json"], env=env, capture_output=True, text=True, timeout=60)
        nodes = json.loads(listing.stdout)["nodes"]
        assert len(nodes) == 1 and nodes[0]["status"] == "registered", nodes
    finally:
        _stop(superlink)
    assert not _processes_of(str(home)), "processes left behind"

