"""The round loop's bookkeeping: rounds with failed clients (what is aggregated, recorded and
scored) and the integer buffers of an averaged model.

The ServerApp's loop runs on a stand-in grid that delivers each message to flowerbed's own
ClientApp functions in this process, and answers with an error for the clients told to fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flwr.app import Context, Error, Message, Metadata, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from flowerbed.clients.attack import Attack, AttackParams
from flowerbed.platform import client_app
from flowerbed.platform.config import parse_run_config
from flowerbed.platform.errors import RunFailed
from flowerbed.platform.federation import _rounded_to_integer_buffers
from flowerbed.platform.recorder import read_metrics
from flowerbed.platform.server_app import RunOutcome, execute

NODE_OFFSET = 100


class InProcessGrid:
    """Delivers messages to the ClientApp functions directly; ``fail[round]`` clients answer with an error."""

    def __init__(self, num_clients: int, fail: dict[int, set[int]]) -> None:
        self.num_clients = num_clients
        self.fail = fail
        self.nodes = {
            NODE_OFFSET + pid: Context(
                run_id=1,
                node_id=NODE_OFFSET + pid,
                node_config={"partition-id": pid, "num-partitions": num_clients},
                state=RecordDict(),
                run_config={},
            )
            for pid in range(num_clients)
        }

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        replies = []
        for number, message in enumerate(messages):
            node = message.metadata.dst_node_id
            metadata = Metadata(
                run_id=1, message_id=f"m{number}", src_node_id=0, dst_node_id=node, reply_to_message_id="",
                group_id="", created_at=0.0, ttl=3600.0, message_type=message.metadata.message_type,
            )
            delivered = Message(content=message.content, metadata=metadata)
            if message.metadata.message_type == "query":
                replies.append(client_app.identify(delivered, self.nodes[node]))
                continue
            server_round = int(message.content["config"]["server-round"])
            if node - NODE_OFFSET in self.fail.get(server_round, set()):
                replies.append(Message(Error(code=1, reason="client crashed"), reply_to=delivered))
            else:
                replies.append(client_app.train(delivered, self.nodes[node]))
        return replies


def test_failed_clients_are_neither_aggregated_nor_scored_and_an_empty_round_records_no_flags(small_run, monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # what Flower's runtime sets for the ServerApp
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    # Krum with f = 0 keeps one client a round and flags the others; there is no attacker.
    config = parse_run_config({**small_run, "strategy.name": "krum", "strategy.krum.num-malicious": 0})
    grid = InProcessGrid(4, fail={2: {0, 1, 2, 3}, 3: {3}})
    outcome = RunOutcome()
    execute(grid, config, outcome, quiet=True)

    rounds = [json.loads(line) for line in (Path(outcome.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [len(r["failures"]) for r in rounds] == [0, 4, 1]
    first, empty, partial = rounds
    assert len(first["flagged"]) == 3 and first["detection"] == {"fpr": 0.75, "precision": 0.0}
    # Nothing was aggregated in round 2: no flags or weights (the strategy's are round 1's).
    assert "flagged" not in empty and "detection" not in empty and "weights" not in empty
    # Round 3: Krum saw clients 0-2 and flagged two of them; client 3's failure is not a benign pass.
    assert 3 not in partial["flagged"] and len(partial["flagged"]) == 2
    assert partial["detection"] == {"fpr": pytest.approx(2 / 3, abs=1e-6), "precision": 0.0}
    summary = json.loads((Path(outcome.run_dir) / "summary.json").read_text())
    assert summary["detection"]["fpr"] == pytest.approx((3 + 2) / (4 + 3), abs=1e-6)


def test_an_error_the_superlink_writes_for_a_lost_node_is_the_addressed_clients_failure():
    """Flower writes "node unavailable" errors from the SuperLink's own node id; only the
    reply-to message id says which client it was for."""
    from flwr.app.message import make_message

    from flowerbed.platform.federation import _split_failures

    metadata = Metadata(
        run_id=1, message_id="", src_node_id=1, dst_node_id=1, reply_to_message_id="sent-to-102", group_id="",
        created_at=0.0, ttl=10.0, message_type="train",
    )
    lost = make_message(metadata=metadata, error=Error(code=5, reason="Error: Node Unavailable"))
    ok, failures = _split_failures([lost], partition_of={101: 1, 102: 2}, addressed={"sent-to-101": 1, "sent-to-102": 2})
    assert ok == [] and failures == [{"partition_id": 2, "reason": "Error: Node Unavailable"}]


def test_an_averaged_integer_buffer_is_rounded_not_truncated():
    # Flower's weighted average of three clients' num_batches_tracked = 100 can come out as
    # 99.99999999999999; load_state_dict would truncate it into the int64 buffer as 99.
    model = nn.BatchNorm1d(2)
    averaged = {key: value.double() for key, value in model.state_dict().items()}
    averaged["num_batches_tracked"] = torch.tensor(99.99999999999999, dtype=torch.float64)
    averaged["running_mean"] = torch.tensor([0.4999999999, 0.25], dtype=torch.float64)
    model.load_state_dict(_rounded_to_integer_buffers(model, averaged))
    assert int(model.num_batches_tracked) == 100
    assert torch.allclose(model.running_mean, torch.tensor([0.5, 0.25]))  # floats are left as they are


def _run_in_process(config, fail: dict[int, set[int]], monkeypatch) -> RunOutcome:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # what Flower's runtime sets for the ServerApp
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    outcome = RunOutcome()
    execute(InProcessGrid(config.num_clients, fail), config, outcome, quiet=True)
    return outcome


def _last_run(small_run) -> Path:
    (run_dir,) = sorted(Path(small_run["output-dir"]).iterdir())
    return run_dir


def test_a_run_whose_clients_all_fail_stops_failing_after_the_first_round(small_run, monkeypatch):
    config = parse_run_config(small_run)
    with pytest.raises(RunFailed, match=r"round 1: 4 of 4 client-rounds so far failed, more than max-failed-share = 0\.5"):
        _run_in_process(config, {1: {0, 1, 2, 3}, 2: {0, 1, 2, 3}, 3: {0, 1, 2, 3}}, monkeypatch)
    run_dir = _last_run(small_run)
    rounds = read_metrics(run_dir)
    assert [r["round"] for r in rounds] == [1] and "max-failed-share" in rounds[0]["stopped"]
    assert not (run_dir / "summary.json").exists() and not (run_dir / "checkpoint.pt").exists()


def test_failures_up_to_the_threshold_let_the_run_finish_and_a_lower_threshold_stops_it(small_run, monkeypatch):
    fail = {1: {0}, 2: {0, 1}}  # 1 of 4, then 3 of 8 client-rounds: 0.375
    _run_in_process(parse_run_config({**small_run, "max-failed-share": 0.375}), fail, monkeypatch)
    assert [len(r["failures"]) for r in read_metrics(_last_run(small_run))] == [1, 2, 0]
    stricter = {**small_run, "max-failed-share": 0.3, "output-dir": small_run["output-dir"] + "-strict"}
    with pytest.raises(RunFailed, match=r"round 2: 3 of 8 client-rounds"):
        _run_in_process(parse_run_config(stricter), fail, monkeypatch)


def test_a_round_below_min_replies_keeps_the_global_model_and_the_run_goes_on(small_run, monkeypatch):
    from flowerbed.platform.run_parts import build_run
    from flowerbed.platform.seeding import seed_torch

    config = parse_run_config({**small_run, "min-replies": 3})
    _run_in_process(config, {1: {0, 1}, 2: {3}}, monkeypatch)
    first, second, third = read_metrics(_last_run(small_run))
    assert "min-replies = 3" in first["not_aggregated"] and "2 of 4" in first["not_aggregated"]
    assert "train_loss" not in first and len(first["failures"]) == 2
    assert "not_aggregated" not in second and "not_aggregated" not in third and "train_loss" in second
    workload = build_run(config, with_strategy=False).workload
    seed_torch(config.seed, "initial-model")
    untrained = workload.evaluate(workload.build_model())
    assert first["clean_loss"] == pytest.approx(untrained["clean_loss"], abs=1e-5)  # round 1 changed nothing (metrics keep 6 digits)
    assert second["clean_loss"] != pytest.approx(untrained["clean_loss"], abs=1e-4)


def test_min_replies_above_the_sampled_clients_is_refused_before_the_run():
    from flowerbed.platform.config import ConfigError

    with pytest.raises(ConfigError, match=r"key 'min-replies': 5 is more than the 4 clients sampled"):
        parse_run_config({"num-clients": 8, "fraction-train": 0.5, "min-replies": 5})


class ScaledUpdate(Attack):
    """Sends ``scale`` x its honest update (a sign flip when negative): the whole-update scaling attack."""

    name = "scaled-update"

    class Params(AttackParams):
        scale: float = -1.0

    def craft(self, update, memory):
        return {key: value * self.params.scale for key, value in update.items()}


@pytest.mark.parametrize("scale", [-1.0, -50.0, 1e30, 3e38])
def test_a_scaled_update_never_leaves_a_nan_global_model_without_a_recorded_reason(small_run, monkeypatch, scale):
    flat = {
        **small_run,
        "attack.num-attackers": 2,
        "attack.name": "test_round_failures:ScaledUpdate",
        "attack.scaled-update.scale": scale,
    }
    try:
        _run_in_process(parse_run_config(flat), {}, monkeypatch)
        stopped = None
    except RunFailed as error:
        stopped = str(error)
    run_dir = _last_run(small_run)
    rounds = read_metrics(run_dir)
    models = [torch.load(run_dir / name, weights_only=True) for name in ("model.pt", "checkpoint.pt") if (run_dir / name).exists()]
    for state in models:
        state = state.get("model", state)
        assert all(torch.isfinite(value).all() for value in state.values() if torch.is_floating_point(value))
    if stopped is None:  # the run went on: every round's model was finite and evaluated
        assert len(rounds) == 3 and all(isinstance(r["clean_loss"], float) for r in rounds)
    else:  # the run stopped and says why, in its last round and its error
        assert rounds[-1]["stopped"] in stopped
    if scale == 3e38:  # 3e38 x an update overflows float32: each such update is dropped, saying why
        attackers = {int(pid) for pid in json.loads((run_dir / "attackers.json").read_text())["attackers"]}
        assert stopped is not None or all(
            {f["partition_id"] for f in r["failures"] if "NaN or Inf" in f["reason"]} == attackers for r in rounds
        )


FLAKY_WORKLOAD = '''
import os
import time

from pydantic import Field

from flowerbed.platform.registry import WORKLOADS
from flowerbed.platform.workload import WorkloadParams
from flowerbed.workloads.image_classification.workload import ImageClassification


class FlakyParams(WorkloadParams):
    fail: str = Field(
        "", description="round:partition[:how] triples, how = raise (default), hang or exit; e.g. '1:0,2:3:hang'"
    )
    hang_seconds: float = Field(30.0, alias="hang-seconds")


@WORKLOADS.register("flaky-images")
class FlakyImages(ImageClassification):
    """Image classification whose training fails for the named (round, partition) pairs: it raises,
    hangs for ``hang-seconds``, or ends its process (in simulation: the Ray actor dies)."""

    name = "flaky-images"
    Params = FlakyParams

    def train(self, model, dataset, context):
        for entry in filter(None, self.params.fail.split(",")):
            server_round, partition_id, how = (entry.split(":") + ["raise"])[:3]
            if (int(server_round), int(partition_id)) == (context.server_round, context.partition_id):
                if how == "hang":
                    time.sleep(self.params.hang_seconds)
                elif how == "exit":
                    os._exit(1)
                else:
                    raise RuntimeError(f"client {context.partition_id} crashed in round {context.server_round}")
        return super().train(model, dataset, context)
'''


def test_a_simulated_run_survives_a_raising_a_hanging_and_a_dead_client_then_fails_past_the_threshold(tmp_path, cache_dir):
    """Through `flowerbed run` and Flower's simulation engine (Ray): round 1 one client raises, round 2
    one hangs past round-timeout, round 3 one ends its actor's process; each round aggregates the other
    three and records why one is missing. Round 4 every client fails: past max-failed-share the run
    stops and exits 1."""
    (tmp_path / "flaky_workloads.py").write_text(FLAKY_WORKLOAD)
    output = tmp_path / "runs"
    settings = {
        "plugins": "flaky_workloads", "workload.name": "flaky-images",
        "workload.flaky-images.fail": "1:0,2:1:hang,3:2:exit,4:0,4:1,4:2,4:3", "workload.flaky-images.hang-seconds": 30,
        "round-timeout": 20, "max-failed-share": 0.4, "min-replies": 2,
        "num-server-rounds": 4, "num-clients": 4, "fraction-train": 1.0, "data.train-size": 400,
        "data.test-size": 40, "data.cache-dir": cache_dir, "partition.name": "iid", "output-dir": str(output),
    }
    command = [sys.executable, "-m", "flowerbed.cli", "run", "--quiet"]
    for key, value in settings.items():
        command += ["--set", f'{key}="{value}"' if isinstance(value, str) else f"{key}={value}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    (run_dir,) = output.iterdir()
    rounds = read_metrics(run_dir)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    failures = [{f["partition_id"]: f["reason"].lower() for f in r["failures"]} for r in rounds]
    assert failures[0] == {0: failures[0][0]} and "crashed in round 1" in failures[0][0]
    assert failures[1] == {1: "no reply within round-timeout = 20 s"}
    # The dead actor's client; Flower's actor pool may hand one more client to that actor before
    # it learns of the death, which then fails the same way.
    assert 2 in failures[2] and len(failures[2]) <= 2 and all("actordied" in reason for reason in failures[2].values())
    for record in rounds[:3]:
        assert "train_loss" in record and "not_aggregated" not in record and "stopped" not in record
    assert re.search(r"flowerbed: the run failed: round 4: [78] of 16 client-rounds so far failed", result.stderr)
    assert "stopped" in rounds[3] and len(rounds[3]["failures"]) == 4 and not (run_dir / "summary.json").exists()
