"""The ``flowerbed`` command: run, report, list, config, bench.

    flowerbed run experiments/dmba.toml --set num-server-rounds=5 --set partition.alpha=0.1
    flowerbed run experiments/lfm-moons.toml --local
    flowerbed report runs/dmba-20261125-101010
    flowerbed list
    flowerbed config --pyproject
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

from flowerbed.bench.command import add_bench_command
from flowerbed.platform.config import ConfigError, default_flat_config, flatten, parse_run_config
from flowerbed.platform.errors import RunFailed, RunFolderError
from flowerbed.platform.recorder import METRICS, read_metrics_file

LOCAL_OVERRIDES = {"num-clients": 1, "fraction-train": 1.0, "min-clients": 1}


def read_experiment(path: str | Path) -> dict[str, Any]:
    """An experiment TOML file as flat dotted keys (tables and dotted keys both work)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"experiment file {path} does not exist"])
    if not path.is_file():
        raise ConfigError([f"experiment file {path} is not a file"])
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError([f"experiment file {path} cannot be read: {error.strerror or error}"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError([f"experiment file {path} is not UTF-8 text (byte {error.start}): is it a TOML file?"]) from None
    try:
        return flatten(tomllib.loads(text))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"experiment file {path} is not valid TOML: {error}"]) from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value (``5``, ``0.1``, ``true``, ``"dmba"``); bare words are strings."""
    if "=" not in text:
        raise ConfigError([f"--set '{text}': expected key=value"])
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def resolve_config(experiment: str | None, assignments: list[str], local: bool = False):
    flat: dict[str, Any] = read_experiment(experiment) if experiment else {}
    if experiment and "experiment" not in flat:
        flat["experiment"] = Path(experiment).stem
    if local:
        flat.update(LOCAL_OVERRIDES)
    for assignment in assignments:
        key, value = parse_assignment(assignment)
        flat[key] = value
    return parse_run_config(flat)


def _command_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from flowerbed.platform.report import summary_table
    from flowerbed.platform.simulation import run_experiment

    config = resolve_config(args.experiment, args.set, local=args.local)
    outcome = run_experiment(config, quiet=args.quiet)
    Console().print(summary_table(outcome.run_dir))
    print(f"results: {outcome.run_dir}")
    return 0


def _command_report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from flowerbed.platform.report import make_plots, summary_table

    run_dir = Path(args.run_dir)
    if not (run_dir / METRICS).is_file():
        raise RunFolderError(f"{run_dir} is not a run folder (no {METRICS})")
    skipped = read_metrics_file(run_dir).skipped
    for line_number, reason in skipped:
        print(f"flowerbed: {run_dir / METRICS}, line {line_number} skipped: {reason}", file=sys.stderr)
    plots = make_plots(run_dir)
    Console().print(summary_table(run_dir))
    for plot in plots:
        print(f"plot: {plot}")
    return 0


def _command_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from flowerbed.platform import registry

    table = Table(title="flowerbed registry")
    table.add_column("kind")
    table.add_column("names")
    for kind, entries in (
        ("datasets", registry.DATASETS),
        ("partitioners", registry.PARTITIONERS),
        ("models", registry.MODELS),
        ("workloads", registry.WORKLOADS),
        ("strategies", registry.STRATEGIES),
        ("attacks", registry.ATTACKS),
        ("triggers", registry.TRIGGERS),
    ):
        table.add_row(kind, ", ".join(entries.names()))
    Console().print(table)
    return 0


def pyproject_config_block(plugins: tuple[str, ...] = ()) -> str:
    """The ``[tool.flwr.app.config]`` table: every key with its default, with ``plugins``
    (already imported) as the default of the ``plugins`` key."""
    lines = ["[tool.flwr.app.config]"]
    flat = default_flat_config()
    if plugins:
        flat["plugins"] = ",".join(plugins)
    for key, value in sorted(flat.items()):
        lines.append(f'"{key}" = {_toml_value(value)}')
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return '"' + ",".join(str(v) for v in value) + '"'
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _command_config(args: argparse.Namespace) -> int:
    config = resolve_config(args.experiment, args.set)  # imports the `plugins` modules
    if args.pyproject:
        print(pyproject_config_block(config.plugins), end="")
        return 0
    for key, value in sorted(config.to_flat().items()):
        print(f'"{key}" = {_toml_value(value)}')
    return 0


def flwr_run_overrides(arguments: list[str]) -> dict[str, Any]:
    """The run-config overrides in a ``flwr run`` argument list (``--run-config``/``-c``, file or ``k=v ...``)."""
    import shlex

    flat: dict[str, Any] = {}
    values = [arguments[i + 1] for i, arg in enumerate(arguments[:-1]) if arg in ("--run-config", "-c")]
    values += [arg.split("=", 1)[1] for arg in arguments if arg.startswith("--run-config=")]
    for value in values:
        if Path(value).is_file():
            flat.update(read_experiment(value))
        else:
            flat.update(parse_assignment(item) for item in shlex.split(value))
    return flat


def app_config_defaults(app_dir: Path) -> dict[str, Any]:
    """The run config a Flower app declares (``[tool.flwr.app.config]`` of its pyproject.toml),
    which ``flwr run`` passes under the overrides; {} where there is none."""
    path = app_dir / "pyproject.toml"
    if not path.is_file():
        return {}
    declared = tomllib.loads(path.read_text()).get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})
    return flatten(declared)


def _command_check_flwr_args(args: argparse.Namespace) -> int:
    """Validate a ``flwr run`` argument list's run config; print its ``num-clients``, each client's
    CPUs and GPUs, and the Ray address ("-" for a private Ray).

    scripts/flwr-local.sh calls this before starting a SuperLink, so bad input fails
    in a second with the key named, and the federation gets the right size.
    """
    from flowerbed.platform.initial_model import initial_weights_path
    from flowerbed.platform.run_parts import build_run

    config = parse_run_config({**app_config_defaults(Path.cwd()), **flwr_run_overrides(args.flwr_args)})
    build_run(config)  # every part's own checks (a defence's bounds, the federation the data allows)
    initial_weights_path(config)
    backend = config.backend
    if backend.client_cpus != int(backend.client_cpus):
        # Flower 1.42's federation config carries client CPUs as an integer (SimulationConfig's
        # client_resources_num_cpus is a uint32), so `flwr run` cannot share a CPU between clients.
        raise ConfigError(
            [f"key 'backend.client-cpus': {backend.client_cpus} is not a whole number; `flwr run` takes whole CPUs"
             " per client (`flowerbed run` takes fractions)"]
        )
    print(config.num_clients, f"{backend.client_cpus:g}", f"{backend.client_gpus:g}", backend.ray_address or "-")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowerbed", description="Federated-learning security testbed on Flower.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="simulate an experiment in-process")
    run.add_argument("experiment", nargs="?", help="experiment TOML file (default: the built-in defaults)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    run.add_argument("--local", action="store_true", help="one client holding all the data (no federation)")
    run.add_argument("--quiet", action="store_true", help="no per-round lines")
    run.set_defaults(handler=_command_run)

    report = commands.add_parser("report", help="re-make plots and print a run's summary")
    report.add_argument("run_dir")
    report.set_defaults(handler=_command_report)

    listing = commands.add_parser("list", help="every registered dataset, model, strategy, attack, ...")
    listing.set_defaults(handler=_command_list)

    config = commands.add_parser("config", help="print the resolved config (or the pyproject block)")
    config.add_argument("experiment", nargs="?")
    config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    config.add_argument(
        "--pyproject",
        action="store_true",
        help="print [tool.flwr.app.config] with every default (with --set plugins=...: and your plugins' keys)",
    )
    config.set_defaults(handler=_command_config)

    check = commands.add_parser("check-flwr-args", help=argparse.SUPPRESS)
    check.add_argument("flwr_args", nargs=argparse.REMAINDER)
    check.set_defaults(handler=_command_check_flwr_args)

    add_bench_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"flowerbed: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, RunFolderError) as error:
        print(f"flowerbed: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(f"flowerbed: the run failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("flowerbed: interrupted; finished rounds are in the run folder's metrics.jsonl", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
