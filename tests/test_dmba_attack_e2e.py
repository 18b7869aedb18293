"""End to end through Flower's simulation engine: an attacker client implants a backdoor.

One BadNets attacker among four clients poisons half of each training batch
with a corner patch labelled 0. The same federation without the attacker is
the control: its final model is scored with the very same backdoor, so the gap
is the attack's doing, not the trigger's. Thresholds sit far from both sides
(attacked runs reach ~1.0, clean ones ~0.1 or less; see the measurements in the
report of the DMBA benchmark), so the test does not flake.
"""

from __future__ import annotations

import json

import torch

from flowerbed.platform.config import parse_run_config
from flowerbed.platform.image_classification import ImageClassification
from flowerbed.platform.recorder import read_metrics
from flowerbed.platform.roles import build_attack_plan
from flowerbed.platform.simulation import run_experiment

ATTACK = {
    "attack.name": "badnets",
    "attack.num-attackers": 1,
    "attack.attacker-ids": "0",
    "attack.targets": "0",
    "attack.poison-fraction": 0.5,
}


def test_badnets_attacker_reaches_high_asr_that_a_clean_federation_does_not(small_run):
    attacked = run_experiment({**small_run, **ATTACK, "experiment": "attacked"}, quiet=True)
    clean = run_experiment({**small_run, "experiment": "clean"}, quiet=True)

    rounds = read_metrics(attacked.run_dir)
    assert [r["attackers"] for r in rounds] == [[0], [0], [0]]  # forced into every round of its window
    assert all(r["failures"] == [] for r in rounds)
    attacked_asr = rounds[-1]["asr"]["badnets-0"]
    summary = json.loads((attacked.run_dir / "summary.json").read_text())
    assert summary["backdoors"]["badnets-0"]["final_asr"] == attacked_asr

    # Score the clean federation's final model with the same backdoor.
    config = parse_run_config({**small_run, **ATTACK})
    workload = ImageClassification(config)
    (backdoor,) = build_attack_plan(config).backdoors()
    model = workload.build_model()
    model.load_state_dict(torch.load(clean.run_dir / "model.pt", weights_only=True))
    clean_asr = workload.attack_success_rate(model, backdoor)

    assert attacked_asr >= 0.8, attacked_asr
    assert clean_asr <= 0.3, clean_asr
