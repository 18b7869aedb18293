"""The per-round update norms: each client's L2 distance to the global model, and their medians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from flowerbed.platform.arrays import update_norm
from flowerbed.platform.summary import build_summary, update_norm_medians


def _record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({key: value.clone() for key, value in state.items()})


def test_update_norm_is_the_l2_distance_over_the_learned_weights():
    generator = torch.Generator().manual_seed(0)
    global_state = {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=generator),
        "bn.running_mean": torch.randn(8, generator=generator),
        "bn.num_batches_tracked": torch.tensor(40),
        "fc.weight": torch.randn(10, 8, generator=generator, dtype=torch.float64),
    }
    local_state = {
        key: value + torch.randn(value.shape, generator=generator, dtype=value.dtype)
        if value.is_floating_point()
        else value + 7
        for key, value in global_state.items()
    }
    expected = torch.cat(
        [
            (local_state[key].double() - global_state[key].double()).reshape(-1)
            for key in global_state
            if global_state[key].is_floating_point() and not key.endswith("running_mean")
        ]
    ).norm()
    assert update_norm(_record(local_state), _record(global_state)) == pytest.approx(float(expected), rel=1e-12)
    assert update_norm(_record(global_state), _record(global_state)) == 0.0  # the integer counter's +7 is not counted
    only_statistics = {**global_state, "bn.running_mean": local_state["bn.running_mean"]}
    assert update_norm(_record(only_statistics), _record(global_state)) == 0.0  # nor a running statistic's move


def test_medians_separate_attackers_from_benign_clients_round_by_round():
    rounds = [
        {
            "round": 1,
            "clients": [0, 1, 2],
            "attackers": [2],
            "update_norms": {"0": 1.0, "1": 3.0, "2": 50.0},
        },
        {
            "round": 2,
            "clients": [0, 1, 2],
            "attackers": [],
            "update_norms": {"0": 2.0, "1": 4.0, "2": 6.0},
        },
    ]
    # Client 2 is an attacker only in round 1: its round-2 update counts as benign.
    assert update_norm_medians(rounds) == {
        "benign_median": float(np.median([1, 3, 2, 4, 6])),
        "attacker_median": 50.0,
    }
    summary = build_summary(rounds, ("clean_acc", "max"))
    assert summary["update_norms"] == update_norm_medians(rounds)
    assert "update_norms" not in summary["final"]
    assert update_norm_medians([{"round": 1}]) == {}
