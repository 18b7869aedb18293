"""Scoring a run against its ground truth: a defence's flags (precision, recall, FPR) and
weights against the true attackers, and a backdoor's persistence after its attackers' last round."""

from __future__ import annotations

import pytest

from flowerbed.platform.config import parse_run_config
from flowerbed.platform.roles import build_attack_plan
from flowerbed.platform.summary import attacker_relative_weight, build_summary

HEADLINE = ("clean_acc", "max")


def test_attacker_relative_weight_compares_attackers_to_the_rounds_average_client():
    rounds = [
        # mean weight 0.25: the attacker's 0.05 is 0.2 of an average client
        {"round": 1, "clean_acc": 0.9, "attackers": [3], "clients": [1, 2, 3, 4], "weights": {"1": 0.3, "2": 0.3, "3": 0.05, "4": 0.35}},
        # weights on another scale (FoolsGold's are not normalised): attacker at 2.0 / mean 1.0
        {"round": 2, "clean_acc": 0.9, "attackers": [4], "clients": [1, 4], "weights": {"1": 0.0, "4": 2.0}},
        {"round": 3, "clean_acc": 0.9, "attackers": [], "clients": [1, 2], "weights": {"1": 0.5, "2": 0.5}},  # no attacker
        {"round": 4, "clean_acc": 0.9, "attackers": [2], "clients": [1, 2]},  # no weights recorded
    ]
    assert attacker_relative_weight(rounds) == pytest.approx((0.2 + 2.0) / 2)
    assert build_summary(rounds, HEADLINE)["attacker_relative_weight"] == pytest.approx(1.1)


def test_no_relative_weight_without_weighted_rounds_that_had_attackers():
    rounds = [
        {"round": 1, "clean_acc": 0.9, "attackers": [3], "clients": [1, 3]},
        {"round": 2, "clean_acc": 0.9, "attackers": [], "clients": [1, 3], "weights": {"1": 0.5, "3": 0.5}},
    ]
    assert attacker_relative_weight(rounds) is None
    assert "attacker_relative_weight" not in build_summary(rounds, HEADLINE)


def test_detection_is_pooled_over_the_rounds_that_report_flags():
    rounds = [
        {"round": 1, "clean_acc": 0.9, "attackers": [3], "clients": [1, 2, 3], "flagged": [3, 1]},
        {"round": 2, "clean_acc": 0.9, "attackers": [3], "clients": [1, 2, 3], "flagged": []},
        {"round": 3, "clean_acc": 0.9, "attackers": [3], "clients": [1, 2, 3]},  # a rule that cannot flag
    ]
    detection = build_summary(rounds, HEADLINE)["detection"]
    assert detection == {"precision": 0.5, "recall": 0.5, "fpr": 0.25}


def test_persistence_counts_from_the_last_round_an_attacker_trained():
    # Sampled participation: the attacker's window is rounds 1-10, but it was last sampled in round 6.
    plan = build_attack_plan(
        parse_run_config(
            {"num-clients": 10, "attack.name": "badnets", "attack.num-attackers": 1, "attack.attacker-ids": "4",
             "attack.end-round": 10, "attack.participation": "sampled", "num-server-rounds": 40}
        )
    )
    rounds = [
        {"round": r, "clean_acc": 0.9, "asr": {"badnets-0": 1.0 - r / 100}, "attackers": [4] if r in (2, 6) else []}
        for r in range(1, 41)
    ]
    entry = build_summary(rounds, HEADLINE, plan)["backdoors"]["badnets-0"]
    assert entry["last_attack_round"] == 6 and entry["asr_plus_10"] == 1.0 - 16 / 100
    # Never sampled: the schedule's last round.
    never = [{**r, "attackers": []} for r in rounds]
    assert build_summary(never, HEADLINE, plan)["backdoors"]["badnets-0"]["last_attack_round"] == 10


def test_local_asr_is_summarised_per_backdoor_over_every_attacker_report():
    # DBA-like: attackers 2 and 10 each implant their own piece; 10's report is in round order, ids numeric.
    from flowerbed.platform.summary import local_asr_of

    plan = build_attack_plan(
        parse_run_config(
            {"num-clients": 12, "attack.name": "dba", "attack.num-attackers": 2, "attack.attacker-ids": "2,10",
             "attack.end-round": 2, "num-server-rounds": 2}
        )
    )
    pieces = [b.name for b in plan.backdoors() if b.name != "dba-global"]
    first, second = pieces
    rounds = [
        {"round": 1, "clean_acc": 0.9, "attackers": [2, 10], "asr": {n: 0.1 for n in pieces},
         "local_asr": {"10": {second: 0.4}, "2": {first: 0.6}}},
        {"round": 2, "clean_acc": 0.9, "attackers": [2, 10], "asr": {n: 0.2 for n in pieces},
         "local_asr": {"2": {first: 1.0}, "10": {second: 0.8}}},
    ]
    assert local_asr_of(rounds, first) == [0.6, 1.0]
    summary = build_summary(rounds, HEADLINE, plan)
    assert summary["backdoors"][first]["local_asr_mean"] == pytest.approx(0.8)
    assert summary["backdoors"][second]["local_asr_last"] == 0.8
    assert "local_asr_mean" not in summary["backdoors"].get("dba-global", {})
    assert "local_asr" not in summary["final"]  # per attacker, not a final value of the model
