"""Property-based checks (Hypothesis) of the run config and the command line: any value for any
key, malformed experiment files and random bytes either validate or fail with a ConfigError whose
every line names what was wrong (the CLI: exit 2, no traceback, no run folder)."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowerbed.cli import main
from flowerbed.platform.config import ConfigError, default_flat_config, parse_run_config
from flowerbed.platform.run_parts import build_run

# Keys whose value names a module to import (``plugins``, a ``module:Class`` name) are fuzzed
# without ':' and without ``plugins``: a random string must not import an arbitrary module.
KEYS = sorted(key for key in default_flat_config() if key != "plugins")
NAME_KEYS = {key for key in KEYS if key == "attack.name" or key.endswith(".name") or key == "attack.trigger"}

finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
huge = st.integers(min_value=-(10**30), max_value=10**30)
words = st.text(max_size=12).filter(lambda text: ":" not in text)
comma_lists = st.lists(st.one_of(st.integers(-3, 40), finite_or_not, words), max_size=6).map(
    lambda items: ",".join(str(item) for item in items)
)
values = st.one_of(
    st.integers(-5, 50), huge, finite_or_not, st.booleans(), words, st.just(""), comma_lists,
    st.lists(st.integers(-2, 20), max_size=4),
)
settings_kw = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


PLUGIN_KEY = re.compile(r"\b(strategy|attack|trigger|workload)\.[\w-]+\.[\w-]+")


def names_a_key(problem: str) -> bool:
    """A problem line names the key: ``key 'x'``, ``keys 'x'/'y'``, ``unknown key 'x'``, ``key prefix 'x'``,
    or a plugin parameter's dotted key (``strategy.krum.num-malicious: ...``)."""
    return ("key" in problem and "'" in problem) or bool(PLUGIN_KEY.search(problem))


def check_config_error(error: ConfigError) -> None:
    assert error.problems, "a ConfigError lists at least one problem"
    for problem in error.problems:
        assert "\n" not in problem, f"a problem is one line: {problem!r}"
        assert names_a_key(problem) or problem.startswith("experiment file"), f"names no key: {problem!r}"


def every_number_is_finite(config) -> bool:
    def walk(value) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, dict):
            return all(walk(item) for item in value.values())
        if isinstance(value, (list, tuple)):
            return all(walk(item) for item in value)
        return True

    return walk(config.resolved_json_dict())


@settings(max_examples=300, **settings_kw)
@given(
    st.dictionaries(st.sampled_from(KEYS), values, min_size=1, max_size=4),
    st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: ":" not in k), values, max_size=1),
)
def test_any_values_for_any_keys_validate_or_name_the_key(flat, unknown):
    for key in NAME_KEYS & set(flat):
        if isinstance(flat[key], str) and ":" in flat[key]:
            flat[key] = flat[key].replace(":", "")
    try:
        config = parse_run_config({**flat, **unknown})
    except ConfigError as error:
        check_config_error(error)
    else:
        assert every_number_is_finite(config), "a config with a non-finite number validated"


@settings(max_examples=300, **settings_kw)
@given(key=st.sampled_from(KEYS), value=values)
def test_any_value_for_one_key_validates_finite_or_names_that_key(key, value):
    if key in NAME_KEYS and isinstance(value, str):
        value = value.replace(":", "")
    try:
        config = parse_run_config({key: value})
    except ConfigError as error:
        check_config_error(error)
    else:
        assert every_number_is_finite(config), f"{key} = {value!r} validated"


FLOAT_KEYS = sorted(key for key, value in default_flat_config().items() if isinstance(value, float))


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_is_refused_for_every_float_key(key, value):
    with pytest.raises(ConfigError) as raised:
        parse_run_config({key: value})
    assert any(f"key '{key}'" in problem and "finite" in problem for problem in raised.value.problems), raised.value


@settings(max_examples=40, **settings_kw)
@given(
    num_clients=st.sampled_from([1, 2, 7, 40, 299, 300, 301, 5000, 10**9]),
    partition=st.sampled_from(["iid", "dirichlet", "pathological"]),
    min_size=st.sampled_from([0, 1, 10, 100]),
    alpha=st.sampled_from([0.01, 0.5, 100.0]),
    strategy=st.sampled_from(["fedavg", "krum", "bulyan", "multi-krum", "trimmed-mean", "fltrust"]),
    malicious=st.integers(0, 200),
    fraction=st.sampled_from([0.01, 0.5, 1.0]),
)
def test_a_federation_and_defence_either_build_or_fail_naming_the_key(
    cache_dir, num_clients, partition, min_size, alpha, strategy, malicious, fraction
):
    """Everything ``build_run`` checks before a run starts: the federation the data allows, a defence's bounds."""
    flat = {
        "data.train-size": 400, "data.test-size": 40, "data.cache-dir": cache_dir, "num-clients": num_clients,
        "partition.name": partition, "partition.min-size": min_size, "partition.alpha": alpha,
        "strategy.name": strategy, "fraction-train": fraction, "min-clients": 1,
    }
    if strategy in ("krum", "bulyan", "multi-krum"):
        flat[f"strategy.{strategy}.num-malicious"] = malicious
    try:
        build_run(parse_run_config(flat))
    except ConfigError as error:
        check_config_error(error)


toml_values = st.recursive(
    st.one_of(st.integers(-(2**63), 2**63 - 1), finite_or_not, st.booleans(), st.text(max_size=8).filter(lambda t: ":" not in t)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3),
    max_leaves=6,
)


def toml_text(table: dict) -> str:
    """A TOML document of ``table`` (top-level keys quoted; nested tables as inline tables)."""

    def value(item) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, float):
            return "nan" if math.isnan(item) else ("inf" if item > 0 else "-inf") if math.isinf(item) else repr(item)
        if isinstance(item, int):
            return str(item)
        if isinstance(item, str):
            return '"' + item.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
        if isinstance(item, list):
            return "[" + ", ".join(value(x) for x in item) + "]"
        return "{" + ", ".join(f'"{k.encode("unicode_escape").decode("ascii")}" = {value(v)}' for k, v in item.items()) + "}"

    return "".join(f'"{key}" = {value(item)}\n' for key, item in table.items())


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


@settings(max_examples=60, **settings_kw)
@given(data=st.one_of(st.binary(max_size=200), st.dictionaries(st.sampled_from(KEYS), toml_values, max_size=3).map(toml_text)))
def test_the_cli_on_any_experiment_file_validates_or_exits_2_with_the_problem_and_no_run_folder(tmp_path, capsys, data):
    path = tmp_path / "experiment.toml"
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    runs = tmp_path / "runs"
    code, err = run_cli(["config", str(path), "--set", f"output-dir={runs}"], capsys)
    assert code in (0, 2)
    if code == 2:
        assert err.startswith("flowerbed: ") and "Traceback" not in err
        lines = err.strip().splitlines()
        assert all(names_a_key(line) or "experiment file" in line for line in lines[1:] or lines)
        # The same file given to `run` fails the same way, before anything starts.
        assert run_cli(["run", str(path), "--set", f"output-dir={runs}"], capsys)[0] == 2
        assert not runs.exists()
    else:
        try:
            tomllib.loads(data if isinstance(data, str) else data.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            pytest.fail("an unreadable experiment file was accepted")


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\xff\xfe\x00junk", "is not UTF-8 text"),
        (b"lr = [", "is not valid TOML"),
        (b'"lr" = nan', "key 'lr': Input should be a finite number"),
        (b'"num-clients" = 100000000000000000000', "key 'num-clients'"),
    ],
)
def test_a_bad_experiment_file_is_one_error_naming_what_is_wrong(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    code, err = run_cli(["run", str(path), "--set", f"output-dir={tmp_path / 'runs'}"], capsys)
    assert code == 2 and expected in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_folder_or_unreadable_path_as_experiment_file_is_an_error(tmp_path, capsys, monkeypatch):
    code, err = run_cli(["config", str(tmp_path)], capsys)
    assert code == 2 and "is not a file" in err
    unreadable = tmp_path / "secret.toml"
    unreadable.write_text("lr = 0.1\n")
    # A permission error, whoever runs the tests (root reads a chmod-0 file anyway).
    read_bytes = Path.read_bytes

    def refuse(path: Path) -> bytes:
        if path == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    code, err = run_cli(["config", str(unreadable)], capsys)
    assert code == 2 and "cannot be read: Permission denied" in err
