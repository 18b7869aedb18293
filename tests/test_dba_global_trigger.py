"""DBA's assembled global trigger is measured as a backdoor of its own (Xie et al., ICLR 2020)."""

from __future__ import annotations

import json

import pytest
import torch

from flowerbed.bench.figures import _round_series
from flowerbed.bench.tables import cell_row
from flowerbed.platform.config import ConfigError, parse_run_config
from flowerbed.platform.roles import build_attack_plan
from flowerbed.platform.summary import build_summary

DBA = {
    "data.name": "digits-rgb32",
    "num-clients": 10,
    "attack.name": "dba",
    "attack.num-attackers": 3,
    "attack.targets": 0,
    "attack.start-round": "2,3,4",
    "attack.end-round": "5,6,9",
}


def changed_pixels(trigger) -> torch.Tensor:
    grey = torch.full((1, 3, 32, 32), 0.5)
    return (trigger.apply(grey) != grey).any(dim=(0, 1))


def test_the_plan_measures_the_global_trigger_and_each_piece_as_part_of_it():
    plan = build_attack_plan(parse_run_config(DBA))
    backdoors = plan.backdoors()
    assert [b.name for b in backdoors] == ["dba-global", "dba-0", "dba-1", "dba-2"]
    whole, *pieces = backdoors
    assert whole.target == 0 and whole.part_of == ""
    assert all(piece.part_of == "dba-global" for piece in pieces)
    # The global trigger stamps exactly the union of the three disjoint pieces.
    piece_pixels = torch.stack([changed_pixels(piece.trigger) for piece in pieces])
    assert int(piece_pixels.sum()) == int(piece_pixels.any(dim=0).sum())
    assert torch.equal(changed_pixels(whole.trigger), piece_pixels.any(dim=0))
    # Its attack window spans every piece's attacker; each piece keeps its own.
    assert (plan.schedule_of("dba-global").start, plan.schedule_of("dba-global").last_round()) == (2, 9)
    assert (plan.schedule_of("dba-1").start, plan.schedule_of("dba-1").last_round()) == (3, 6)
    described = plan.describe()["attackers"]
    assert all(entry["backdoors"][0] == "dba-global" for entry in described.values())


def test_one_dba_attacker_has_no_global_trigger():
    plan = build_attack_plan(parse_run_config({**DBA, "attack.num-attackers": 1, "attack.start-round": 1, "attack.end-round": 5}))
    assert [(b.name, b.part_of) for b in plan.backdoors()] == [("dba-0", "")]


def test_dba_attackers_with_different_targets_are_a_config_error():
    with pytest.raises(ConfigError, match=r"attack.targets.*'dba'.*one target class.*\[0, 1\]"):
        build_attack_plan(parse_run_config({**DBA, "attack.targets": "0,1,0"}))


def test_summary_marks_the_pieces_and_the_bench_averages_the_whole_backdoors_only(tmp_path):
    plan = build_attack_plan(parse_run_config(DBA))
    asr = {"dba-global": 0.9, "dba-0": 0.1, "dba-1": 0.2, "dba-2": 0.3}
    rounds = [{"round": r, "clean_acc": 0.8 + r / 100, "asr": asr} for r in range(1, 11)]
    summary = build_summary(rounds, ("clean_acc", "max"), plan)
    assert summary["backdoors"]["dba-0"]["part_of"] == "dba-global"
    assert "part_of" not in summary["backdoors"]["dba-global"]

    run_dir = tmp_path / "cell" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"num-server-rounds": 10}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    row = cell_row({"cell": "dba__fedavg__seed0", "attack": "dba", "defence": "fedavg", "seed": 0}, tmp_path / "cell")
    assert row["asr_final_mean"] == pytest.approx(0.9)  # the global trigger, not the mean with its pieces
    assert row["backdoors"]["dba-1"]["final_asr"] == 0.2
    assert row["clean_acc_min"] == pytest.approx(0.81)
    asr_by_round, _ = _round_series(run_dir)  # the ASR-over-rounds plots agree with the tables
    assert list(asr_by_round.values()) == pytest.approx([0.9] * 10)
