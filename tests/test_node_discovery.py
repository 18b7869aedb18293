"""The ServerApp waits for simulated nodes to register, then maps partition ids to node ids."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flowerbed.platform import federation
from flowerbed.platform.config import ConfigError, parse_run_config


class RegisteringGrid:
    """A stand-in Grid whose nodes register over time: ``schedule[i]`` nodes at the i-th call."""

    def __init__(self, schedule: list[int]) -> None:
        self.schedule = schedule
        self.calls = 0

    def get_node_ids(self) -> list[int]:
        count = self.schedule[min(self.calls, len(self.schedule) - 1)]
        self.calls += 1
        return [100 + i for i in range(count)]

    def send_and_receive(self, messages, timeout):
        # Node 100 + i holds partition i.
        return [
            SimpleNamespace(
                has_error=lambda: False,
                metadata=SimpleNamespace(src_node_id=m.metadata.dst_node_id),
                content={"metrics": {"partition-id": m.metadata.dst_node_id - 100}},
            )
            for m in messages
        ]


@pytest.fixture
def quick_waits(monkeypatch):
    monkeypatch.setattr(federation.time, "sleep", lambda seconds: None)
    clock = iter(range(0, 10_000_000, 1))  # every call to monotonic() is one second later
    monkeypatch.setattr(federation.time, "monotonic", lambda: float(next(clock)))
    # Flower's Message needs a running app context; the stand-in grid only reads the destination.
    monkeypatch.setattr(
        federation,
        "Message",
        lambda content, message_type, dst_node_id: SimpleNamespace(metadata=SimpleNamespace(dst_node_id=dst_node_id)),
    )


def test_waits_for_slow_nodes_and_maps_partitions(quick_waits):
    config = parse_run_config({"num-clients": 4})
    grid = RegisteringGrid([0] * 200 + [2] * 10 + [4])  # nothing for a long while, then all
    assert federation.discover_partitions(grid, config) == {0: 100, 1: 101, 2: 102, 3: 103}


def test_a_smaller_federation_is_a_config_error_once_the_count_settles(quick_waits):
    config = parse_run_config({"num-clients": 4})
    grid = RegisteringGrid([1, 2, 3])  # stays at 3 nodes
    with pytest.raises(ConfigError, match="num-clients.*4 clients but the federation runs 3 nodes"):
        federation.discover_partitions(grid, config)
    assert grid.calls < 100  # gave up after the count settled, not after the long first-node wait


def test_no_node_at_all_is_reported_as_such(quick_waits):
    with pytest.raises(RuntimeError, match="no node registered"):
        federation.discover_partitions(RegisteringGrid([0]), parse_run_config({"num-clients": 2}))
