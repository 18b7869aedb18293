"""The run config: defaults, flat round trip, clear errors naming the key, pyproject in sync."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from flowerbed.cli import flwr_run_overrides, parse_assignment, pyproject_config_block
from flowerbed.platform.config import ConfigError, RunConfig, default_flat_config, parse_run_config
from flowerbed.platform.roles import attack_end_rounds

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_round_trip_through_flat_keys():
    config = parse_run_config({})
    assert config == RunConfig()
    assert parse_run_config(config.to_flat()) == config
    assert config.to_flat()["num-server-rounds"] == 20
    assert config.to_flat()["data.name"] == "digits-rgb32"


def test_dotted_keys_and_plugin_tables_are_parsed():
    config = parse_run_config({"partition.alpha": 0.1, "num-server-rounds": 5, "attack.targets": "1,2,3"})
    assert config.partition.alpha == 0.1
    assert config.num_server_rounds == 5
    assert config.attack.targets == (1, 2, 3)


@pytest.mark.parametrize(
    ("flat", "named_key"),
    [
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"lr": "fast"}, "lr"),
        ({"data.nmae": "x"}, "data.nmae"),
        ({"bogus": 1}, "bogus"),
        ({"data.name": "imagenet"}, "data.name"),
        ({"model.name": "vgg99"}, "model.name"),
        ({"strategy.name": "nope"}, "strategy.name"),
        ({"partition.name": "random"}, "partition.name"),
        ({"fraction-train": 1.5}, "fraction-train"),
        ({"min-clients": 50}, "min-clients"),
        ({"attack.num-attackers": 20, "attack.name": "badnets"}, "attack.num-attackers"),
        ({"attack.num-attackers": 1, "attack.name": "badnets", "attack.targets": 12}, "attack.targets"),
        ({"attack.num-attackers": 2, "attack.name": "badnets", "attack.targets": "1,2,3"}, "attack.targets"),
        ({"attack.num-attackers": 1, "attack.name": "no.such.module:Attack"}, "attack.name"),
        ({"attack.num-attackers": 1, "attack.name": "badnets", "attack.start-round": 9, "attack.end-round": 3}, "attack.start-round"),
        ({"attack.num-attackers": 1, "attack.name": "badnets", "attack.attacker-ids": "99"}, "attack.attacker-ids"),
        ({"attack.num-attackers": 1, "attack.name": "badnets", "attack.poison-fraction": 1.5}, "attack.poison-fraction"),
        ({"attack.num-attackers": 2, "attack.name": "badnets", "attack.poison-fraction": "0,0"}, "attack.poison-fraction"),
        ({"strategy.krum.not-a-param": 1}, "strategy.krum.not-a-param"),
        ({"strategy.nosuch.x": 1}, "strategy.nosuch"),
    ],
)
def test_bad_input_names_the_key(flat, named_key):
    with pytest.raises(ConfigError) as error:
        parse_run_config(flat)
    assert named_key in str(error.value)


def test_a_control_attacker_may_poison_nothing_beside_others():
    config = parse_run_config({"attack.num-attackers": 2, "attack.name": "dmba", "attack.poison-fraction": "0.3,0"})
    assert config.attack.poison_fraction == (0.3, 0.0)


@pytest.fixture
def user_attacks(tmp_path, monkeypatch, isolated_plugins):
    """docs/examples/my_attacks.py (attack 'my-attack') and a module whose attacks reuse built-in names."""
    (tmp_path / "renamed_attacks.py").write_text(
        "from flowerbed.clients.attack import Attack, AttackParams\n"
        "from flowerbed.clients.attacks.badnets import BadNets\n"
        "class Tweaked(BadNets):\n    pass\n"
        "class OtherParams(AttackParams):\n    strength: float = 1.0\n"
        "class Clash(Attack):\n    name = 'badnets'\n    Params = OtherParams\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT / "docs" / "examples"))


def test_an_imported_attack_reads_its_keys_under_its_class_name(user_attacks):
    # Before its module is imported, 'my-attack' names nothing.
    with pytest.raises(ConfigError, match="unknown key prefix 'attack.my-attack'"):
        parse_run_config({"attack.my-attack.boost": 4})
    flat = {"attack.num-attackers": 1, "attack.name": "my_attacks:MyAttack", "attack.targets": 9}
    config = parse_run_config({**flat, "attack.my-attack.source-class": 3, "attack.my-attack.boost": 4})
    params = config.plugin_params("attack", "my_attacks:MyAttack")
    assert (params.source_class, params.boost) == (3, 4.0)
    assert config.plugin_params("attack", "badnets") is not None  # registered plugins unchanged
    with pytest.raises(ConfigError, match="attack.my-attack.source-class"):
        parse_run_config({**flat, "attack.my-attack.source-class": -1})
    with pytest.raises(ConfigError, match=r"attack.my-atack'.*my-attack"):
        parse_run_config({**flat, "attack.my-atack.boost": 4})
    from flowerbed.platform.roles import build_attack_plan

    (backdoor,) = build_attack_plan(config).backdoors()
    assert backdoor.source_classes == (3,) and backdoor.target == 9
    with pytest.raises(ConfigError, match=r"backdoor 'myattack-0' has source classes \[10\]"):
        build_attack_plan(parse_run_config({**flat, "attack.my-attack.source-class": 10}))
    with pytest.raises(ConfigError, match="exclude the target class 9"):
        build_attack_plan(parse_run_config({**flat, "attack.my-attack.source-class": 9}))


def test_plugins_register_attacks_by_name_for_every_run(user_attacks, tmp_path):
    flat = {"plugins": "my_attacks", "attack.num-attackers": 1, "attack.name": "my-attack", "attack.targets": 9}
    config = parse_run_config({**flat, "attack.my-attack.boost": 4})
    assert config.plugins == ("my_attacks",) and config.plugin_params("attack", "my-attack").boost == 4.0
    # Its keys are valid in runs that do not use it (they stand in pyproject.toml's defaults).
    assert parse_run_config({"plugins": "my_attacks", "attack.my-attack.boost": 4}).attack.num_attackers == 0
    block = pyproject_config_block(("my_attacks",))
    assert '"plugins" = "my_attacks"' in block and '"attack.my-attack.source-class" = 0' in block
    with pytest.raises(ConfigError, match=r"key 'plugins'.*'no_such_module'.*PYTHONPATH"):
        parse_run_config({"plugins": "my_attacks,no_such_module"})
    (tmp_path / "broken_attacks.py").write_text("raise RuntimeError('half-written')\n")
    with pytest.raises(ConfigError, match="key 'plugins'.*broken_attacks.*RuntimeError: half-written"):
        parse_run_config({"plugins": "broken_attacks"})


def test_an_imported_attack_named_like_a_registered_one(user_attacks):
    # A subclass that keeps the built-in's name and parameters shares its keys.
    tweaked = {"attack.num-attackers": 1, "attack.name": "renamed_attacks:Tweaked", "attack.badnets.poison-epochs": 3}
    assert parse_run_config(tweaked).plugin_params("attack", "renamed_attacks:Tweaked").poison_epochs == 3
    # Another attack under a built-in's name, with other parameters, would make the keys ambiguous.
    with pytest.raises(ConfigError, match="renamed_attacks.Clash is named 'badnets'"):
        parse_run_config({"attack.num-attackers": 1, "attack.name": "renamed_attacks:Clash"})


def test_pyproject_declares_every_key_with_its_default():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = pyproject["tool"]["flwr"]["app"]["config"]
    from flowerbed.platform.config import flatten

    declared = flatten(declared)
    expected = tomllib.loads(pyproject_config_block())["tool"]["flwr"]["app"]["config"]
    assert declared == flatten(expected), "run `flowerbed config --pyproject` and paste it into pyproject.toml"
    assert set(declared) == set(default_flat_config())


def test_cli_overrides_parse_toml_values():
    assert parse_assignment("num-server-rounds=5") == ("num-server-rounds", 5)
    assert parse_assignment("partition.alpha=0.1") == ("partition.alpha", 0.1)
    assert parse_assignment("attack.name=dmba") == ("attack.name", "dmba")
    assert flwr_run_overrides(["--run-config", "num-clients=4 lr=0.1"]) == {"num-clients": 4, "lr": 0.1}
    assert flwr_run_overrides(["--stream", "-c", "seed=3"]) == {"seed": 3}


def test_cli_reports_bad_config_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flowerbed.cli", "run", "--set", "num-server-rounds=-1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "num-server-rounds" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "path", sorted(p for p in (ROOT / "experiments").glob("*.toml") if not p.name.startswith("bench-")), ids=lambda p: p.name
)
def test_every_experiment_file_resolves(path):
    from flowerbed.cli import resolve_config

    config = resolve_config(str(path), [])
    assert config.experiment  # named after the file unless it sets one


def test_a_key_added_later_counts_as_its_default_in_a_saved_config(tmp_path):
    """Runs and bench cells saved before a key existed stay resumable after an upgrade."""
    import json

    from flowerbed.platform.config import config_differences
    from flowerbed.platform.server_app import check_resume

    current = parse_run_config({"lr": 0.05, "strategy.name": "krum", "strategy.krum.num-malicious": 2})
    older = current.to_json_dict()
    del older["plugins"]  # as written before the key existed
    assert config_differences(older, current.to_json_dict()) == []
    assert config_differences(older, parse_run_config({"plugins": "json"}).to_json_dict())[:2] == ["lr", "plugins"]
    # A plugin key one side lacks counts as the plugin's default (Krum: f = 1), so dropping a
    # defence parameter set to another value is a difference, and dropping one at its default is not.
    assert config_differences(older, {**older, "strategy": {"name": "krum"}}) == ["strategy.krum.num-malicious"]
    at_default = parse_run_config({"strategy.name": "krum", "strategy.krum.num-malicious": 1}).to_json_dict()
    assert config_differences(at_default, {**at_default, "strategy": {"name": "krum"}}) == []

    (tmp_path / "config.json").write_text(json.dumps(older))
    assert check_resume(parse_run_config({**current.to_flat(), "resume": str(tmp_path)})) == tmp_path.resolve()
    with pytest.raises(ConfigError, match="differs from the saved run in lr"):
        check_resume(parse_run_config({**current.to_flat(), "lr": 0.1, "resume": str(tmp_path)}))


def test_run_folders_save_the_parameters_of_the_plugins_they_use_so_a_changed_default_is_caught():
    from flowerbed.platform.config import config_differences

    config = parse_run_config(
        {"strategy.name": "krum", "attack.num-attackers": 3, "attack.name": "dba", "trigger.dba.gap": 1}
    )
    resolved = config.resolved_json_dict()
    assert resolved["strategy"]["krum"] == {"num-malicious": 1}  # the default, written out
    assert resolved["trigger"]["dba"]["gap"] == 1 and resolved["trigger"]["dba"]["piece-width"] == 6
    assert resolved["attack"]["dba"]["poison-epochs"] == config.plugin_params("attack", "dba").poison_epochs
    assert "patch" not in resolved.get("trigger", {}) and "median" not in resolved["strategy"]  # plugins not in use
    assert parse_run_config(resolved).resolved_json_dict() == resolved  # a saved config.json parses back to itself
    # A run saved when DBA's pieces were 4 px wide differs from today's defaults in that key;
    # one saved before plugin parameters were written out counts as today's defaults.
    older_default = {**resolved, "trigger": {"dba": {**resolved["trigger"]["dba"], "piece-width": 4}}}
    assert config_differences(older_default, resolved) == ["trigger.dba.piece-width"]
    assert config_differences(config.to_json_dict(), resolved) == []
    # The trigger in use is each attack's default unless attack.trigger names one.
    assert parse_run_config({"attack.num-attackers": 1, "attack.name": "badnets"}).plugins_in_use("trigger") == ["patch"]
    named = parse_run_config({"attack.num-attackers": 2, "attack.name": "badnets", "attack.trigger": "blend,dba"})
    assert named.plugins_in_use("trigger") == ["blend", "dba"]


def test_more_forced_attackers_than_a_round_holds_is_an_error():
    from flowerbed.platform.roles import build_attack_plan

    flat = {"num-clients": 10, "fraction-train": 0.4, "attack.num-attackers": 6, "attack.name": "badnets"}
    with pytest.raises(ConfigError, match=r"attack.num-attackers.*6 attackers are active in round 1.*the 4 clients"):
        build_attack_plan(parse_run_config(flat))
    # Staggered windows that never overlap by more than 4, or sampled participation, fit.
    staggered = {**flat, "attack.start-round": "1,1,1,1,3,3", "attack.end-round": "2,2,2,2,4,4"}
    assert len(build_attack_plan(parse_run_config(staggered)).attackers) == 6
    assert build_attack_plan(parse_run_config({**flat, "attack.participation": "sampled"})).participation == "sampled"


def test_resuming_with_more_rounds_may_not_stretch_an_attack_that_ends_at_the_last_round(tmp_path):
    """``attack.end-round = 0`` means the last round: a resume that adds rounds would lengthen the attack."""
    import json

    from flowerbed.platform.server_app import check_resume

    def saved_run(flat: dict) -> dict:
        (tmp_path / "config.json").write_text(json.dumps(parse_run_config(flat).resolved_json_dict()))
        return {**flat, "resume": str(tmp_path)}

    until_last = {"num-server-rounds": 10, "attack.num-attackers": 2, "attack.name": "badnets", "attack.end-round": "5,0"}
    resumed = saved_run(until_last)
    assert attack_end_rounds(parse_run_config(until_last)) == [5, 10]
    assert check_resume(parse_run_config(resumed)) == tmp_path.resolve()  # same rounds: fine
    with pytest.raises(ConfigError, match=r"attack.end-round.*num-server-rounds 20 instead of 10.*\[5, 10\] to \[5, 20\]"):
        check_resume(parse_run_config({**resumed, "num-server-rounds": 20}))
    # Adding rounds is fine when every attack ends at a named round, or there is no attack.
    for flat in ({**until_last, "attack.end-round": "5,10"}, {"num-server-rounds": 10}):
        assert check_resume(parse_run_config({**saved_run(flat), "num-server-rounds": 20})) == tmp_path.resolve()
