"""The extension workloads (lfm, mgcm, gmf) end to end through the real harness.

Each workload runs once federated (3 clients, FedAvg, Flower's simulation engine) from its
federated experiment file, and one runs locally through ``flowerbed run --local``; every run
must leave the standard run folder with the workload's own metric names and must learn.
Bad configs must fail in ``parse_run_config`` with an error that names the key.
Sizes are tiny: Ray's start-up dominates each run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from flowerbed.cli import main as flowerbed_main
from flowerbed.cli import resolve_config
from flowerbed.platform.config import ConfigError, parse_run_config
from flowerbed.platform.recorder import read_metrics
from flowerbed.platform.registry import WORKLOADS
from flowerbed.platform.run_parts import build_workload
from flowerbed.platform.simulation import run_experiment
from flowerbed.platform.workload import Workload, WorkloadParams

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"

# Per workload: its federated experiment file, overrides that shrink it to seconds, the metric
# names every round must carry, and the metric that must improve.
TINY_LFM = {
    "num-server-rounds": 2, "batch-size": 128,
    "workload.lfm.num-samples": 800, "workload.lfm.num-blocks": 2, "workload.lfm.rounds-per-block": 1,
    "workload.lfm.hidden-width": 32, "workload.lfm.hidden-layers": 2, "workload.lfm.steps-per-round": 120,
    "workload.lfm.distill-steps": 60, "workload.lfm.distill-width": 32, "workload.lfm.distill-layers": 2,
    "workload.lfm.ode-steps": 4, "workload.lfm.eval-samples": 400,
}
TINY_MGCM = {
    "num-server-rounds": 2, "local-epochs": 2, "batch-size": 16, "lr": 0.003,
    "workload.mgcm.d-model": 32, "workload.mgcm.num-heads": 2, "workload.mgcm.encoder-layers": 1,
    "workload.mgcm.decoder-layers": 1, "workload.mgcm.ffn-dim": 64, "workload.mgcm.num-words": 10,
    "workload.mgcm.num-particles": 2, "workload.mgcm.frame-dim": 8, "workload.mgcm.min-source-len": 3,
    "workload.mgcm.max-source-len": 5, "workload.mgcm.frame-noise": 0.3, "workload.mgcm.train-size": 360,
    "workload.mgcm.test-size": 40, "workload.mgcm.eval-wait-ks": "3",
}
TINY_GMF = {
    "num-server-rounds": 3, "local-epochs": 2, "batch-size": 32, "lr": 0.003,
    "workload.gmf.num-samples": 600, "workload.gmf.dims": "12,20,8", "workload.gmf.num-classes": 4,
    "workload.gmf.hidden-dim": 32, "workload.gmf.specific-dim": 8, "workload.gmf.invariant-dim": 8,
}
TINY_SELF_TPT = {
    # CoOp's source training: the classification loss must fall in three rounds. With CPT and gradient
    # matching it does not yet at this size (docs/extensions/self-tpt.md); their path is unit-tested.
    "num-server-rounds": 3, "local-epochs": 2, "lr": 0.02, "partition.name": "iid", "workload.self-tpt.method": "coop",
    "workload.self-tpt.width": 64, "workload.self-tpt.layers": 1, "workload.self-tpt.embed-dim": 32,
    "workload.self-tpt.pretrain-steps": 120, "workload.self-tpt.pretrain-images": 400,
    "workload.self-tpt.train-images": 150, "workload.self-tpt.test-images": 80, "workload.self-tpt.tta-steps": 2,
}
CASES: dict[str, dict[str, Any]] = {
    "lfm": {
        "experiment": "lfm-moons-federated.toml", "tiny": TINY_LFM,
        "metrics": {"energy_distance", "mmd", "sliced_w", "nll", "energy_distance_distilled", "train_loss"},
    },
    "mgcm": {
        "experiment": "mgcm-federated.toml", "tiny": TINY_MGCM,
        "metrics": {"bleu", "al", "bleu_k3", "al_k3", "bleu_offline", "al_offline", "test_loss", "train_loss"},
    },
    "self-tpt": {
        "experiment": "self-tpt-federated.toml", "tiny": TINY_SELF_TPT,
        "metrics": {"base_acc", "new_acc", "new_acc_no_adaptation", "zero_shot_new_acc", "harmonic_mean",
                    "adaptation_seconds", "grad_cosine_new", "train_loss"},
    },
    "gmf": {
        "experiment": "gmf-federated.toml", "tiny": TINY_GMF,
        "metrics": {"acc", "acc_missing_m0", "acc_missing_m1", "acc_missing_m2", "params", "flops", "train_loss"},
    },
}


def _assignments(overrides: dict[str, Any]) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]


def _untrained_headline(config) -> float:
    """The headline metric of the model the run starts from (seeded like the harness's)."""
    from flowerbed.platform.seeding import seed_torch

    workload = build_workload(config)
    seed_torch(config.seed, "initial-model")
    metric, _ = workload.headline_metric()
    return float(workload.evaluate(workload.build_model())[metric])


def check_run_folder(run_dir: Path, config, metric_names: set[str], num_clients: int) -> list[dict]:
    """The standard run folder, the workload's own metrics every round, a consistent summary and model."""
    for name in ("config.json", "metrics.jsonl", "summary.json", "model.pt", "checkpoint.pt", "plots/metrics.png"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "attackers.json").exists()  # no attack applies: the file is left out
    assert json.loads((run_dir / "config.json").read_text()) == config.resolved_json_dict()
    rounds = read_metrics(run_dir)
    assert [r["round"] for r in rounds] == list(range(1, config.num_server_rounds + 1))
    for record in rounds:
        assert metric_names <= set(record), metric_names - set(record)
        assert "clean_acc" not in record and "asr" not in record
        assert len(record["clients"]) == num_clients and record["failures"] == []

    workload = build_workload(config)
    metric, mode = workload.headline_metric()
    summary = json.loads((run_dir / "summary.json").read_text())
    pick = max if mode == "max" else min
    assert summary["rounds_completed"] == config.num_server_rounds
    assert summary["best"]["metric"] == metric
    assert summary["best"]["value"] == pick(r[metric] for r in rounds)

    final_state = torch.load(run_dir / "model.pt", weights_only=True)
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["round"] == config.num_server_rounds
    assert all(torch.equal(final_state[key], checkpoint["model"][key]) for key in final_state)
    model = workload.build_model()
    model.load_state_dict(final_state)
    assert workload.evaluate(model)[metric] == pytest.approx(rounds[-1][metric], rel=1e-5, abs=1e-6)
    return rounds


BUILTIN_WORKLOADS = [name for name in WORKLOADS.names() if WORKLOADS.get(name).__module__.startswith("flowerbed.")]


def test_every_extension_workload_has_an_end_to_end_case():
    """A registered extension is run end to end here the moment it registers: this fails until CASES has it."""
    missing = sorted(set(BUILTIN_WORKLOADS) - {"image-classification"} - set(CASES))
    assert not missing, f"add a CASES entry (experiment file, tiny overrides, metrics) for the workloads {missing}"


@pytest.mark.parametrize("name", BUILTIN_WORKLOADS)
def test_every_workload_declares_itself_and_its_defaults_validate(name):
    """The shared checks of every registered workload: its name, Params, headline and config keys."""
    workload_cls = WORKLOADS.get(name)
    assert issubclass(workload_cls, Workload) and workload_cls.name == name
    assert issubclass(workload_cls.Params, WorkloadParams)
    # Its experiment file (an extension's own keys, e.g. lfm's rounds) or the plain defaults.
    config = resolve_config(str(EXPERIMENTS / CASES[name]["experiment"]), []) if name in CASES else parse_run_config({})
    assert config.workload.name == name
    params = config.plugin_params("workload", name)
    assert isinstance(params, workload_cls.Params)
    assert workload_cls.check_config(config, params) == []
    metric, mode = workload_cls.headline_metric(workload_cls.__new__(workload_cls))
    assert isinstance(metric, str) and mode in ("max", "min")


@pytest.mark.parametrize("name", list(CASES))
def test_federated_run_from_the_experiment_file(name, tmp_path):
    case = CASES[name]
    overrides = {**case["tiny"], "num-clients": 3, "fraction-train": 1.0, "output-dir": str(tmp_path)}
    config = resolve_config(str(EXPERIMENTS / case["experiment"]), _assignments(overrides))
    assert config.workload.name == name and config.strategy.name == "fedavg" and config.partition.name == "iid"
    outcome = run_experiment(config, quiet=True)
    rounds = check_run_folder(outcome.run_dir, config, case["metrics"], num_clients=3)

    if name == "lfm":  # lower is better; the untrained chain generates N(0, I)
        assert rounds[-1]["energy_distance"] < rounds[0]["energy_distance"]
        assert rounds[-1]["energy_distance"] < 0.5 * _untrained_headline(config)
    elif name == "self-tpt":  # the classification loss on the clients' base-class images falls
        assert rounds[-1]["train_loss"] < rounds[0]["train_loss"]
    elif name == "mgcm":
        assert rounds[-1]["bleu"] > rounds[0]["bleu"]
        assert rounds[-1]["test_loss"] < rounds[0]["test_loss"]
    else:  # 4 classes: chance is 0.25
        assert rounds[-1]["acc"] > rounds[0]["acc"] and rounds[-1]["acc"] > 0.45


def test_local_run_through_the_cli(tmp_path, capsys):
    """``flowerbed run experiments/gmf-federated.toml --local``: one client holding all the data."""
    experiment = EXPERIMENTS / CASES["gmf"]["experiment"]
    assignments = _assignments({**TINY_GMF, "output-dir": str(tmp_path)})
    assert flowerbed_main(["run", str(experiment), "--local", "--quiet", *sum((["--set", a] for a in assignments), [])]) == 0
    (run_dir,) = tmp_path.glob("gmf-federated-*")
    assert f"results: {run_dir}" in capsys.readouterr().out
    config = resolve_config(str(experiment), assignments, local=True)
    assert config.num_clients == 1
    rounds = check_run_folder(run_dir, config, CASES["gmf"]["metrics"], num_clients=1)
    assert rounds[-1]["acc"] > max(rounds[0]["acc"], _untrained_headline(config))


EXTENSION_EXPERIMENTS = sorted(path for name in CASES for path in EXPERIMENTS.glob(f"{name}-*.toml"))


def test_every_extension_has_a_local_and_a_federated_experiment():
    for name in CASES:
        files = [path for path in EXTENSION_EXPERIMENTS if path.name.startswith(f"{name}-")]
        sizes = {resolve_config(str(path), []).num_clients > 1 for path in files}
        assert sizes == {False, True}, name


@pytest.mark.parametrize("path", EXTENSION_EXPERIMENTS, ids=lambda p: p.name)
def test_extension_experiment_files_resolve_federated_and_local(path):
    config = resolve_config(str(path), [])
    assert path.name.startswith(f"{config.workload.name}-")
    local = resolve_config(str(path), [], local=True)
    assert local.num_clients == 1 and local.workload == config.workload
    assert config.attack.num_attackers == 0
    assert config.lr <= 0.01  # every extension trains with Adam; the platform's 0.02 is an SGD rate


@pytest.mark.parametrize(
    ("flat", "key"),
    [
        ({"workload.name": "lfm", "num-server-rounds": 4}, "num-server-rounds"),
        ({"workload.name": "lfm", "num-server-rounds": 5, "num-clients": 3, "partition.name": "dirichlet"},
         "partition.name"),
        ({"workload.name": "lfm", "num-server-rounds": 5, "num-clients": 20, "partition.name": "iid",
          "workload.lfm.num-samples": 20}, "workload.lfm.num-samples"),
        ({"workload.name": "lfm", "workload.lfm.num-blocks": 0}, "workload.lfm.num-blocks"),
        ({"workload.name": "lfm", "workload.lfm.widht": 8}, "workload.lfm.widht"),
        ({"workload.name": "mgcm", "num-clients": 3, "workload.mgcm.train-size": 2}, "workload.mgcm.train-size"),
        ({"workload.name": "mgcm", "num-clients": 3, "partition.name": "pathological",
          "partition.classes-per-client": 9}, "partition.classes-per-client"),
        ({"workload.name": "mgcm", "workload.mgcm.wait-k": 0}, "workload.mgcm.wait-k"),
        ({"workload.name": "gmf", "num-clients": 3, "workload.gmf.num-samples": 20, "workload.gmf.test-fraction": 0.9},
         "workload.gmf.num-samples"),
        ({"workload.name": "gmf", "num-clients": 3, "partition.name": "pathological",
          "partition.classes-per-client": 11}, "partition.classes-per-client"),
        ({"workload.name": "gmf", "workload.gmf.fusion": "tensor"}, "workload.gmf.fusion"),
        ({"workload.name": "gmf", "workload.gmf.partitioner": "iid"}, "workload.gmf.partitioner"),
        ({"workload.name": "self-tpt", "workload.self-tpt.method": "tpt"}, "workload.self-tpt.method"),
        ({"workload.name": "self-tpt", "workload.self-tpt.width": 40}, "workload.self-tpt.width"),
        ({"workload.name": "self-tpt", "num-clients": 3, "partition.name": "pathological",
          "partition.classes-per-client": 21}, "partition.classes-per-client"),
        ({"workload.name": "self-tpt", "num-clients": 30, "workload.self-tpt.train-images": 20},
         "workload.self-tpt.train-images"),
    ],
)
def test_bad_extension_config_names_the_key(flat, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        parse_run_config(flat)


@pytest.mark.parametrize("name", list(CASES))
def test_attackers_on_an_extension_workload_name_attack_num_attackers(name):
    flat = {"workload.name": name, "attack.num-attackers": 1, "attack.name": "badnets", "num-server-rounds": 5,
            "partition.name": "iid"}
    with pytest.raises(ConfigError, match="'attack.num-attackers'") as error:
        parse_run_config(flat)
    assert error.value.problems == [problem for problem in error.value.problems if "attack.num-attackers" in problem]
    # The same attack on the image-classification workload is valid.
    parse_run_config({**flat, "workload.name": "image-classification"})
