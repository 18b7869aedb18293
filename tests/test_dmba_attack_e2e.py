"""End to end through Flower's simulation engine: an attacker client implants a backdoor.

One BadNets attacker among four clients poisons half of each training batch
with a corner patch labelled 0. The same federation without the attacker is
the control: its final model is scored with the very same backdoor, so the gap
is the attack's doing, not the trigger's. The attacked model must also not
simply predict the target for everything (its clean non-target images mostly
keep other labels), so a high ASR means the trigger works. Measured with this
config for seeds 0, 1, 2: attacked ASR 1.0 / 1.0 / 1.0, clean non-target images
sent to the target 0.07 / 0.36 / 0.16, control ASR 0.04 / 0.03 / 0.01; the
thresholds below leave wide margins (the run is deterministic per seed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from flowerbed.platform.config import parse_run_config
from flowerbed.platform.recorder import read_metrics
from flowerbed.platform.roles import build_attack_plan
from flowerbed.platform.simulation import run_experiment
from flowerbed.workloads.image_classification.data.base import to_float
from flowerbed.workloads.image_classification.workload import ImageClassification

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
    assert not any("local_asr" in r for r in read_metrics(clean.run_dir))

    rounds = read_metrics(attacked.run_dir)
    assert [r["attackers"] for r in rounds] == [[0], [0], [0]]  # forced into every round of its window
    assert all(r["failures"] == [] for r in rounds)
    attacked_asr = rounds[-1]["asr"]["badnets-0"]
    summary = json.loads((attacked.run_dir / "summary.json").read_text())
    assert summary["backdoors"]["badnets-0"]["final_asr"] == attacked_asr
    attacker_norms = [r["update_norms"]["0"] for r in rounds]
    assert summary["update_norms"]["attacker_median"] == pytest.approx(sorted(attacker_norms)[1])
    # The attacker's own trained model, on its own images, carries the backdoor every round.
    local = [r["local_asr"]["0"]["badnets-0"] for r in rounds]
    assert [set(r["local_asr"]) for r in rounds] == [{"0"}] * 3
    assert min(local) >= 0.9, local
    assert summary["backdoors"]["badnets-0"]["local_asr_mean"] == pytest.approx(sum(local) / 3, abs=1e-5)
    assert summary["backdoors"]["badnets-0"]["local_asr_last"] == local[-1]

    # Score the clean federation's final model with the same backdoor.
    config = parse_run_config({**small_run, **ATTACK})
    workload = ImageClassification(config)
    (backdoor,) = build_attack_plan(config).backdoors()
    clean_asr = workload.attack_success_rate(_load(workload, clean.run_dir), backdoor)
    attacked_model = _load(workload, attacked.run_dir)
    assert workload.attack_success_rate(attacked_model, backdoor) == pytest.approx(attacked_asr, abs=1e-5)

    assert attacked_asr >= 0.9, attacked_asr
    assert clean_asr <= 0.2, clean_asr
    # Not a model that answers 0 to everything: the trigger, not a collapse, makes the ASR.
    assert _untriggered_rate(workload, attacked_model, backdoor.target) <= 0.5


def test_the_documented_custom_attacker_runs_by_import_path(small_run, monkeypatch, isolated_plugins):
    """docs/custom-attacker.md's source-specific attacker, named by import path with its own
    keys; the server measures its ASR on triggered images of the source class only."""
    examples = str(Path(__file__).resolve().parents[1] / "docs" / "examples")
    monkeypatch.syspath_prepend(examples)  # the driver
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [examples, os.environ.get("PYTHONPATH")])))  # Ray workers
    custom = {
        "attack.name": "my_attacks:MyAttack",
        "attack.num-attackers": 1,
        "attack.attacker-ids": "0",
        "attack.targets": "9",
        "attack.poison-fraction": 1.0,
        "attack.my-attack.source-class": 3,
        "attack.my-attack.boost": 3.0,
    }
    outcome = run_experiment({**small_run, **custom, "num-server-rounds": 2}, quiet=True)

    described = json.loads((outcome.run_dir / "attackers.json").read_text())["attackers"]["0"]
    assert described["attack"] == "my_attacks:MyAttack" and described["backdoors"] == ["myattack-0"]
    assert described["params"]["source-class"] == 3 and described["params"]["boost"] == 3.0
    assert described["source_classes"] == [3] and described["target"] == 9
    rounds = read_metrics(outcome.run_dir)
    assert all(r["failures"] == [] and r["attackers"] == [0] for r in rounds)
    benign = sorted(norm for client, norm in rounds[0]["update_norms"].items() if client != "0")
    assert rounds[0]["update_norms"]["0"] > 2 * benign[len(benign) // 2]  # boosted x3

    # The recorded ASR is the share of triggered class-3 test images sent to 9, recomputed here.
    config = parse_run_config({**small_run, **custom})
    workload = ImageClassification(config)
    (backdoor,) = build_attack_plan(config).backdoors()
    model = _load(workload, outcome.run_dir)
    sources = workload.dataset.test_images[workload.dataset.test_labels == 3]
    with torch.no_grad():
        expected = (model(backdoor.trigger.apply(to_float(sources))).argmax(1) == 9).float().mean().item()
    assert rounds[-1]["asr"]["myattack-0"] == pytest.approx(expected, abs=1e-6)


def _load(workload: ImageClassification, run_dir) -> torch.nn.Module:
    model = workload.build_model()
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    return model.eval()


@torch.no_grad()
def _untriggered_rate(workload: ImageClassification, model: torch.nn.Module, target: int) -> float:
    """Share of clean test images whose label is not ``target`` that the model calls ``target``."""
    keep = workload.dataset.test_labels != target
    predictions = model(to_float(workload.dataset.test_images[keep])).argmax(1)
    return (predictions == target).float().mean().item()
