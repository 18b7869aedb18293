"""End to end through Flower's simulation engine: the run folder, reproducibility, kill and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import flowerbed
from flowerbed.platform.arrays import is_learned
from flowerbed.platform.config import parse_run_config
from flowerbed.platform.recorder import read_metrics
from flowerbed.platform.simulation import run_experiment

ROOT = Path(__file__).resolve().parents[1]


def _without_timing(rounds):
    return [{key: value for key, value in record.items() if key != "seconds"} for record in rounds]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    flat = {
        "num-server-rounds": 3,
        "num-clients": 4,
        "fraction-train": 0.75,
        "local-epochs": 2,
        "batch-size": 16,
        "lr": 0.03,
        "data.train-size": 1600,
        "data.test-size": 300,
        "data.cache-dir": cache_dir,
        "partition.name": "iid",
        "output-dir": str(tmp_path_factory.mktemp("runs")),
        "experiment": "reference",
    }
    outcome = run_experiment(flat, quiet=True)
    return flat, outcome.run_dir


def test_run_folder_holds_every_file_with_consistent_contents(reference):
    flat, run_dir = reference
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "model.pt", "plots/accuracy.png"):
        assert (run_dir / name).is_file(), name
    assert run_dir.name.startswith("reference-")
    config = json.loads((run_dir / "config.json").read_text())
    assert config == parse_run_config(flat).resolved_json_dict()
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["flowerbed"] == flowerbed.__version__
    assert torch.__version__.startswith(environment["packages"]["torch"])
    assert environment["packages"]["flwr"].startswith("1.42.")
    assert environment["machine"]["torch-cpu-capability"] == torch.backends.cpu.get_cpu_capability()

    rounds = read_metrics(run_dir)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for record in rounds:
        assert {"clean_acc", "clean_loss", "train_loss", "clients", "seconds", "failures"} <= set(record)
        assert len(record["clients"]) == 3  # fraction-train 0.75 of 4 clients
        assert record["failures"] == []
        assert "asr" not in record and "attackers" not in record  # keys that do not apply are left out
        assert sorted(int(pid) for pid in record["update_norms"]) == record["clients"]
        assert all(norm > 0 for norm in record["update_norms"].values())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    assert summary["final"]["clean_acc"] == rounds[-1]["clean_acc"]
    assert summary["best"]["value"] == max(r["clean_acc"] for r in rounds)
    assert set(summary["update_norms"]) == {"benign_median"}  # no attacker in this run
    assert (run_dir / "plots" / "update_norms.png").is_file()

    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    final_model = torch.load(run_dir / "model.pt", weights_only=True)
    assert checkpoint["round"] == 3
    assert all(torch.equal(final_model[k], checkpoint["model"][k]) for k in final_model)
    # The saved model reproduces the recorded accuracy.
    from flowerbed.workloads.image_classification.workload import ImageClassification

    workload = ImageClassification(parse_run_config(flat))
    model = workload.build_model()
    model.load_state_dict(final_model)
    assert workload.evaluate(model)["clean_acc"] == pytest.approx(rounds[-1]["clean_acc"], abs=1e-6)


def test_federated_training_learns(reference):
    _, run_dir = reference
    rounds = read_metrics(run_dir)
    assert rounds[-1]["clean_acc"] > 0.25  # chance is 0.1
    assert rounds[-1]["clean_loss"] < rounds[0]["clean_loss"]


def test_same_seed_gives_identical_metrics_and_killed_run_resumes(reference, tmp_path):
    """Kill a run (SIGKILL) after its first checkpoint, check what it left is readable, resume it,
    and compare every round with the uninterrupted reference run (same seed).

    A round's metrics line is written before its checkpoint (a run killed between the two
    re-runs that round on resume), so the kill waits for the checkpoint file."""
    flat, reference_dir = reference
    output = tmp_path / "runs"
    command = [sys.executable, "-m", "flowerbed.cli", "run", "--quiet"]
    for key, value in {**flat, "output-dir": str(output), "experiment": "killed"}.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    process = subprocess.Popen(command, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and process.poll() is None:
            if list(output.glob("killed-*/checkpoint.pt")):
                break
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    (killed_dir,) = output.glob("killed-*")
    left = read_metrics(killed_dir)  # every line parses
    checkpoint_round = torch.load(killed_dir / "checkpoint.pt", weights_only=True)["round"]
    assert checkpoint_round >= 1 and len(left) in (checkpoint_round, checkpoint_round + 1)
    assert not (killed_dir / "summary.json").exists()
    first_environment = json.loads((killed_dir / "environment.json").read_text())

    outcome = run_experiment({**flat, "output-dir": str(output), "experiment": "killed", "resume": str(killed_dir)}, quiet=True)
    assert outcome.run_dir == killed_dir
    environment = json.loads((killed_dir / "environment.json").read_text())
    (resumed,) = environment.pop("resumed")  # the first record is kept, the resumed session's appended
    assert environment == first_environment and resumed["after-round"] == checkpoint_round
    assert resumed["command"] != first_environment["command"]  # cli run, then run_experiment in this process
    assert _without_timing(read_metrics(killed_dir)) == _without_timing(read_metrics(reference_dir))
    assert (killed_dir / "summary.json").exists()


def _process_tree(root: int) -> list[int]:
    """``root`` and every live descendant, from /proc."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent_of[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parent_of.items() if parent in frontier]
        tree += frontier
    return tree


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flwr") is None, reason="the flwr command is not installed")
def test_a_flwr_run_killed_as_a_whole_resumes_under_flwr_run_to_the_same_rounds(reference, tmp_path):
    """The same guarantee under `flwr run` (scripts/flwr-local.sh): SIGKILL the whole process tree
    (the script, the SuperLink, the simulation process, Ray) after the first checkpoint, resume with
    `flwr run`, and every round equals the uninterrupted in-process reference run's."""
    flat, reference_dir = reference
    output = tmp_path / "runs"
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": "39197"}

    def flwr_run(settings: dict, name: str) -> list[str]:
        experiment = tmp_path / f"{name}.toml"
        experiment.write_text("".join(f'"{key}" = {json.dumps(value)}\n' for key, value in settings.items()))
        return [str(ROOT / "scripts" / "flwr-local.sh"), "--run-config", str(experiment)]

    killed = {**flat, "output-dir": str(output), "experiment": "flwr-killed"}
    process = subprocess.Popen(
        flwr_run(killed, "killed"), cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline and process.poll() is None and not list(output.glob("flwr-killed-*/checkpoint.pt")):
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before it could be killed"
        tree = _process_tree(process.pid)  # the SuperLink runs in a session of its own
        assert len(tree) > 3, tree
        for pid in tree:
            os.kill(pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    (killed_dir,) = output.glob("flwr-killed-*")
    assert not (killed_dir / "summary.json").exists()
    checkpoint_round = torch.load(killed_dir / "checkpoint.pt", weights_only=True)["round"]
    assert checkpoint_round < flat["num-server-rounds"]

    result = subprocess.run(
        flwr_run({**killed, "resume": str(killed_dir)}, "resumed"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming after round {checkpoint_round}" in result.stdout + result.stderr
    assert "round   3/3" in result.stdout and "flwr run: finished:completed" in result.stdout  # progress reaches the user
    assert _without_timing(read_metrics(killed_dir)) == _without_timing(read_metrics(reference_dir))
    assert json.loads((killed_dir / "summary.json").read_text())["rounds_completed"] == flat["num-server-rounds"]
    assert not subprocess.run(["pgrep", "-f", "flower-superlink.*39197"], capture_output=True).stdout, "a SuperLink was left"


def test_resume_refuses_a_different_config(reference):
    flat, run_dir = reference
    from flowerbed.platform.config import ConfigError

    with pytest.raises(ConfigError, match="lr"):
        run_experiment({**flat, "lr": 0.5, "resume": str(run_dir)}, quiet=True)


def _learned_weights(run_dir: Path) -> torch.Tensor:
    """A run's saved learned weights as one vector (BatchNorm's running statistics left out: they move at any lr)."""
    state = torch.load(run_dir / "model.pt", weights_only=True)
    return torch.cat([value.flatten().double() for key, value in state.items() if is_learned(key, value.numpy().dtype)])


def test_model_init_starts_the_federation_from_given_weights(reference, tmp_path):
    flat, run_dir = reference
    trained_acc = read_metrics(run_dir)[-1]["clean_acc"]
    # Nearly no learning in the new runs: their weights after one round are those they started from.
    barely = {**flat, "num-server-rounds": 1, "lr": 1e-7, "momentum": 0.0, "output-dir": str(tmp_path)}
    fresh = run_experiment({**barely, "experiment": "fresh"}, quiet=True)
    started = run_experiment({**barely, "experiment": "init", "model.init": str(run_dir)}, quiet=True)
    assert json.loads((started.run_dir / "config.json").read_text())["model"]["init"] == str(run_dir)
    trained = _learned_weights(run_dir)
    from_init = (_learned_weights(started.run_dir) - trained).norm()
    from_fresh = (_learned_weights(fresh.run_dir) - trained).norm()
    assert from_init <= 1e-3 * from_fresh, (float(from_init), float(from_fresh))
    init_acc = read_metrics(started.run_dir)[0]["clean_acc"]
    assert abs(init_acc - trained_acc) <= 0.05, (init_acc, trained_acc)


def test_model_init_accepts_a_file_or_checkpoint_and_names_the_key_when_wrong(reference, tmp_path):
    from flowerbed.platform.config import ConfigError
    from flowerbed.platform.initial_model import load_initial_weights
    from flowerbed.workloads.image_classification.workload import ImageClassification

    flat, run_dir = reference
    workload = ImageClassification(parse_run_config(flat))
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    for source in (run_dir, run_dir / "model.pt", run_dir / "checkpoint.pt"):
        model = workload.build_model()
        assert load_initial_weights(model, parse_run_config({**flat, "model.init": str(source)}))
        assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    assert not load_initial_weights(workload.build_model(), parse_run_config(flat))  # unset: a fresh model

    wrong_model = parse_run_config({**flat, "model.init": str(run_dir), "model.name": "mlp"})
    mlp = ImageClassification(wrong_model).build_model()
    with pytest.raises(ConfigError, match=r"model\.init.*does not fit model\.name='mlp'"):
        load_initial_weights(mlp, wrong_model)
    (tmp_path / "notes.txt").write_text("not weights")
    for bad, message in ((tmp_path / "missing.pt", "does not exist"), (tmp_path / "notes.txt", "not a saved state dict")):
        with pytest.raises(ConfigError, match=rf"model\.init.*{message}"):
            load_initial_weights(workload.build_model(), parse_run_config({**flat, "model.init": str(bad)}))
    with pytest.raises(ConfigError, match=r"model\.init.*does not exist"):  # before the simulation starts
        run_experiment({**flat, "model.init": str(tmp_path / "missing.pt")}, quiet=True)
