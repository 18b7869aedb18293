"""``flowerbed bench``: run a grid of experiments (attacks × defences × seeds) and tabulate it.

    flowerbed bench experiments/bench-dmba.toml                 # run (or resume) the whole grid
    flowerbed bench experiments/bench-dmba.toml --dry-run       # list the cells and their state
    flowerbed bench experiments/bench-dmba.toml --only attack=dmba,badnets,defence=krum
    flowerbed bench --report bench-results/bench-dmba           # re-make tables and plots only

The grid file (TOML)::

    name = "bench-dmba"            # optional; default: the file's stem
    seeds = [0, 1]                 # one cell per seed (sets the run key `seed`)
    pretrain-rounds = 20           # optional: every cell starts from a clean FedAvg pre-training of
                                   # [base] (once per seed, <out>/pretraining/; see bench_pretraining.py)
    defences = ["fedavg", "krum"]  # or tables: [defences.<label>] with run keys
    [base]                         # run keys shared by every cell (flat or nested)
    num-server-rounds = 40
    [attacks.none]                 # run keys per attack; label "none" means no attackers
    [attacks.dmba]
    attack.name = "dmba"
    attack.num-attackers = 3

A defence given by name is ``{"strategy.name": name}``; a ``[defences.<label>]``
table without ``strategy.name`` uses the label as the strategy name. An attack
table without ``attack.name`` uses its label when the label is a registered
attack, and the label ``none`` defaults to ``attack.num-attackers = 0``.
Later layers win: base < attack < defence < seed.

A *cell* is (attack label, defence label, seed). Its run folder lives under
``<out>/cells/<attack>__<defence>__seed<k>/`` (the cell sets the run keys
``output-dir`` and ``experiment``; the run folder adds a timestamp). A cell is
done when a run folder there holds ``summary.json``; a run folder with a
checkpoint but no summary is resumed (``resume`` key); a cell whose last attempt
raised is recorded as failed (``cell.json``, ``error.txt``) and retried on the
next invocation. Existing runs made with a different config are an error
(never silently mixed into the tables). Every cell's config is validated before
anything runs.

Outputs in ``<out>`` are made from the run folders' files only (summary.json,
metrics.jsonl), never from memory: ``results.csv`` (one row per cell),
``results.md`` (mean ± sample std over seeds), ``heatmap_asr.png`` (defence ×
attack, mean final ASR), ``heatmap_clean_acc.png`` and
``plots/asr_rounds_<defence>.png`` (ASR and clean accuracy over rounds, one line
per attack, mean over seeds with a min–max band). In results.csv, ``seconds`` is
the run's summed round time (summary.json) and ``wall_seconds`` the bench's
clock for the cell's last attempt (Ray start-up included); per-backdoor columns
are ``<backdoor>.<final_asr|max_asr|asr_plus_10|asr_plus_30|last_attack_round>``
and stay empty where a cell has no such backdoor.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import textwrap
import time
import tomllib
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowerbed.platform.bench_pretraining import (
    check_existing,
    ensure_pretrained,
    pretrained_weights,
    pretraining_error_log,
    pretraining_config,
)
from flowerbed.platform.config import ConfigError, RunConfig, flatten, parse_run_config
from flowerbed.platform.recorder import (
    ATTACKERS,
    CHECKPOINT,
    CONFIG,
    SUMMARY,
    atomic_write_bytes,
    atomic_write_json,
    read_metrics,
)

GRID_KEYS = ("name", "seeds", "pretrain-rounds", "base", "attacks", "defences")
# Run keys the bench sets itself for every cell.
CELL_KEYS = ("output-dir", "experiment", "resume", "seed")
# Keys of a saved config.json that may differ from the cell's config without making the run stale.
IGNORED_WHEN_COMPARING = ("output-dir", "resume")
NO_ATTACK = "none"
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*(_[A-Za-z0-9.\-]+)*$")  # no "__", no "/", no spaces

MANIFEST = "grid.json"
CELL_RECORD = "cell.json"
ERROR_LOG = "error.txt"
CELLS = "cells"

# results.csv columns before the per-backdoor ones.
BASE_COLUMNS = (
    "cell",
    "attack",
    "defence",
    "seed",
    "status",
    "rounds_completed",
    "rounds_planned",
    "clean_acc",
    "best_clean_acc",
    "asr_final_mean",
    "asr_max_mean",
    "asr_plus_10_mean",
    "asr_plus_30_mean",
    "detection_precision",
    "detection_recall",
    "detection_fpr",
    "seconds",
    "wall_seconds",
    "run_dir",
    "error",
)
BACKDOOR_FIELDS = ("final_asr", "max_asr", "asr_plus_10", "asr_plus_30", "last_attack_round")


# ----------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Cell:
    """One experiment of the grid: an attack, a defence, a seed, and its run keys."""

    attack: str
    defence: str
    seed: int
    overrides: dict[str, Any] = field(compare=False, hash=False)
    pretrained: bool = field(default=False, compare=False, hash=False)

    @property
    def name(self) -> str:
        return f"{self.attack}__{self.defence}__seed{self.seed}"

    def flat_config(self, cell_dir: Path) -> dict[str, Any]:
        """The cell's flat run config, writing its run folder under ``cell_dir``."""
        flat = {**self.overrides, "seed": self.seed, "output-dir": str(cell_dir), "experiment": self.name}
        if self.pretrained:  # cell_dir is <out>/cells/<name>
            flat["model.init"] = str(pretrained_weights(cell_dir.parent.parent, self.seed))
        return flat


@dataclass
class Grid:
    name: str
    base: dict[str, Any]
    attacks: dict[str, dict[str, Any]]
    defences: dict[str, dict[str, Any]]
    seeds: list[int]
    source: str = ""
    pretrain_rounds: int = 0

    def cells(self) -> list[Cell]:
        """Every cell, attack-major then defence then seed (the order they run in)."""
        return [
            Cell(attack, defence, seed, {**self.base, **attack_keys, **defence_keys}, pretrained=self.pretrain_rounds > 0)
            for attack, attack_keys in self.attacks.items()
            for defence, defence_keys in self.defences.items()
            for seed in self.seeds
        ]

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "attacks": list(self.attacks),
            "defences": list(self.defences),
            "seeds": list(self.seeds),
            "pretrain_rounds": self.pretrain_rounds,
            "cells": [
                {"name": c.name, "attack": c.attack, "defence": c.defence, "seed": c.seed, "overrides": c.overrides}
                for c in self.cells()
            ],
        }


def read_grid(path: str | Path) -> Grid:
    """Parse a grid TOML file; structural problems raise :class:`ConfigError` naming the key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"grid file {path} does not exist"])
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"grid file {path} is not valid TOML: {error}"]) from None
    return parse_grid(data, default_name=path.stem, source=str(path))


def parse_grid(data: dict[str, Any], default_name: str = "bench", source: str = "") -> Grid:
    """A grid from a parsed TOML mapping (see the module docstring for the format)."""
    from flowerbed.platform.registry import ATTACKS

    problems: list[str] = []
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        problems.append(f"unknown grid key(s) {', '.join(repr(k) for k in unknown)} (allowed: {', '.join(GRID_KEYS)})")

    name = data.get("name", default_name)
    if not isinstance(name, str) or not LABEL_PATTERN.match(name):
        problems.append(f"grid key 'name': {name!r} must be a simple name (letters, digits, '.', '-', '_')")

    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        problems.append(f"grid key 'seeds': expected a non-empty list of distinct integers, got {seeds!r}")
        seeds = []

    pretrain_rounds = data.get("pretrain-rounds", 0)
    if not isinstance(pretrain_rounds, int) or isinstance(pretrain_rounds, bool) or pretrain_rounds < 0:
        problems.append(f"grid key 'pretrain-rounds': expected a whole number >= 0, got {pretrain_rounds!r}")
        pretrain_rounds = 0

    base = data.get("base", {})
    if not isinstance(base, dict):
        problems.append("grid key 'base': expected a table of run keys")
        base = {}
    base = flatten(base)
    problems += _controlled_keys(base, "base", pretrain_rounds)

    raw_attacks = data.get("attacks", {NO_ATTACK: {}})
    attacks: dict[str, dict[str, Any]] = {}
    if isinstance(raw_attacks, list):
        raw_attacks = {label: {} for label in raw_attacks} if all(isinstance(a, str) for a in raw_attacks) else None
    if not isinstance(raw_attacks, dict) or not raw_attacks:
        problems.append("grid key 'attacks': expected [attacks.<label>] tables of run keys (or a list of labels)")
        raw_attacks = {}
    for label, keys in raw_attacks.items():
        if not isinstance(keys, dict):
            problems.append(f"grid key 'attacks.{label}': expected a table of run keys")
            continue
        keys = flatten(keys)
        problems += _controlled_keys(keys, f"attacks.{label}", pretrain_rounds)
        if label == NO_ATTACK:
            keys.setdefault("attack.num-attackers", 0)
        elif "attack.name" not in keys and label in ATTACKS:
            keys["attack.name"] = label
        attacks[label] = keys

    raw_defences = data.get("defences", ["fedavg"])
    defences: dict[str, dict[str, Any]] = {}
    if isinstance(raw_defences, list) and all(isinstance(d, str) for d in raw_defences):
        if len(set(raw_defences)) != len(raw_defences):
            problems.append("grid key 'defences': a defence is listed twice")
        raw_defences = {label: {} for label in raw_defences}
    if not isinstance(raw_defences, dict) or not raw_defences:
        problems.append("grid key 'defences': expected a list of strategy names or [defences.<label>] tables")
        raw_defences = {}
    for label, keys in raw_defences.items():
        if not isinstance(keys, dict):
            problems.append(f"grid key 'defences.{label}': expected a table of run keys")
            continue
        keys = flatten(keys)
        problems += _controlled_keys(keys, f"defences.{label}", pretrain_rounds)
        keys.setdefault("strategy.name", label)
        defences[label] = keys

    for kind, labels in (("attacks", attacks), ("defences", defences)):
        for label in labels:
            if not LABEL_PATTERN.match(label):
                problems.append(
                    f"grid key '{kind}.{label}': a label must be letters, digits, '.', '-' or single '_' (it names folders)"
                )
    if problems:
        raise ConfigError(problems)
    return Grid(
        name=name,
        base=base,
        attacks=attacks,
        defences=defences,
        seeds=list(seeds),
        source=source,
        pretrain_rounds=pretrain_rounds,
    )


def _controlled_keys(keys: dict[str, Any], where: str, pretrain_rounds: int = 0) -> list[str]:
    controlled = CELL_KEYS + (("model.init",) if pretrain_rounds else ())
    return [
        f"grid key '{where}.{key}': the bench sets '{key}' for every cell"
        + (" (list seeds in the top-level 'seeds')" if key == "seed" else "")
        + (" (it starts from the grid's pre-training: drop 'pretrain-rounds' to set it)" if key == "model.init" else "")
        for key in keys
        if key in controlled
    ]


def select_cells(cells: list[Cell], only: str | None, grid: Grid) -> list[Cell]:
    """Filter cells by ``attack=a,b,defence=c,seed=0``: a bare item adds a value to the previous key."""
    if not only:
        return cells
    wanted: dict[str, set[str]] = {}
    key = None
    for item in (part.strip() for part in only.split(",")):
        if not item:
            continue
        if "=" in item:
            key, value = (part.strip() for part in item.split("=", 1))
            if key not in ("attack", "defence", "seed"):
                raise ConfigError([f"--only: unknown key '{key}' (use attack=, defence=, seed=)"])
        elif key is None:
            raise ConfigError([f"--only '{only}': expected key=value items (attack=..., defence=..., seed=...)"])
        else:
            value = item
        wanted.setdefault(key, set()).add(value)
    known = {"attack": set(grid.attacks), "defence": set(grid.defences), "seed": {str(s) for s in grid.seeds}}
    problems = [
        f"--only {key}={value}: not in the grid (grid has: {', '.join(sorted(known[key]))})"
        for key, values in wanted.items()
        for value in sorted(values - known[key])
    ]
    if problems:
        raise ConfigError(problems)
    return [
        cell
        for cell in cells
        if all(str(getattr(cell, key)) in values for key, values in wanted.items())
    ]


# ----------------------------------------------------------------------------- cell folders
@dataclass
class CellState:
    """What a cell's folder holds: the finished run, an unfinished run to resume, or nothing."""

    cell_dir: Path
    done: Path | None = None
    partial: Path | None = None

    @property
    def status(self) -> str:
        if self.done is not None:
            return "done"
        record = read_cell_record(self.cell_dir)
        if record.get("status") == "failed":
            return "failed"
        if self.partial is not None:
            return "interrupted"
        return "pending"


def cell_dir_of(out: Path, cell_name: str) -> Path:
    return Path(out) / CELLS / cell_name


def run_folders(cell_dir: Path) -> list[Path]:
    """The run folders (they hold config.json) in a cell's folder, oldest first."""
    if not cell_dir.is_dir():
        return []
    folders = [p for p in cell_dir.iterdir() if p.is_dir() and (p / CONFIG).is_file()]
    return sorted(folders, key=lambda p: ((p / CONFIG).stat().st_mtime, p.name))


def inspect_cell(cell_dir: Path) -> CellState:
    """Find the cell's finished run (latest with summary.json) or the run to resume (latest with a checkpoint)."""
    state = CellState(cell_dir)
    folders = run_folders(cell_dir)
    finished = [p for p in folders if (p / SUMMARY).is_file()]
    if finished:
        state.done = finished[-1]
        return state
    resumable = [p for p in folders if (p / CHECKPOINT).is_file()]
    if resumable:
        state.partial = resumable[-1]
    return state


def read_cell_record(cell_dir: Path) -> dict[str, Any]:
    path = Path(cell_dir) / CELL_RECORD
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = set(saved) | set(current)
    return sorted(k for k in keys if k not in IGNORED_WHEN_COMPARING and saved.get(k) != current.get(k))


# ----------------------------------------------------------------------------- validation
@dataclass
class PlannedCell:
    cell: Cell
    cell_dir: Path
    config: RunConfig
    state: CellState


def plan_grid(grid: Grid, out: Path, only: str | None = None) -> tuple[list[PlannedCell], list[PlannedCell]]:
    """Validate every cell of the grid (all of them, also those ``--only`` leaves out) and check
    existing runs against it. Return (every cell, the selected cells); raise :class:`ConfigError`
    listing every problem (a problem shared by several cells is listed once, with its cells)."""
    from flowerbed.platform.registry import WORKLOADS
    from flowerbed.platform.roles import build_attack_plan
    from flowerbed.platform.server_app import build_strategy

    out = Path(out).expanduser().resolve()
    problems: dict[str, list[str]] = {}
    planned: list[PlannedCell] = []
    for seed in grid.seeds if grid.pretrain_rounds else []:
        try:
            check_existing(pretraining_config(grid.base, grid.pretrain_rounds, seed, out), seed, out)
        except ConfigError as error:
            for problem in error.problems:
                problems.setdefault(problem, []).append(f"pretraining__seed{seed}")
    for cell in grid.cells():
        cell_dir = cell_dir_of(out, cell.name)
        try:
            config = parse_run_config(cell.flat_config(cell_dir))
            build_attack_plan(config)  # per-attacker checks (triggers, attack parameters)
            # Loads the dataset (once per process): missing data files fail here, before any cell runs.
            workload = WORKLOADS.get(config.workload.name)(config, config.plugin_params("workload", config.workload.name))
            build_strategy(config, workload)  # the defence's own checks (e.g. Bulyan's n >= 4f + 3)
            if cell.attack != NO_ATTACK and config.attack.num_attackers == 0:
                problem = (
                    f"grid key 'attacks.{cell.attack}': attack.num-attackers is 0, so the cell has no attacker "
                    f"(set it, or label a clean setting '{NO_ATTACK}')"
                )
                raise ConfigError([problem])
        except (ValueError, FileNotFoundError) as error:  # ConfigError is a ValueError; missing data files
            for problem in error.problems if isinstance(error, ConfigError) else [str(error)]:
                problems.setdefault(problem, []).append(cell.name)
            continue
        state = inspect_cell(cell_dir)
        existing = state.done or state.partial
        if existing is not None:
            saved = json.loads((existing / CONFIG).read_text())
            changed = config_differences(saved, config.to_json_dict())
            if changed:
                problem = (
                    f"cell {cell.name}: the existing run {existing} was made with a different config "
                    f"(keys {', '.join(changed)}); delete {cell_dir} to rerun it, or give another --out"
                )
                problems.setdefault(problem, []).append(cell.name)
                continue
        planned.append(PlannedCell(cell, cell_dir, config, state))
    if problems:
        raise ConfigError([_with_cells(problem, names) for problem, names in problems.items()])
    selected_cells = set(select_cells([p.cell for p in planned], only, grid))
    return planned, [p for p in planned if p.cell in selected_cells]


def _with_cells(problem: str, names: list[str]) -> str:
    if len(names) == 1 and names[0] in problem:
        return problem
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{problem} [cell {shown}]"


# ----------------------------------------------------------------------------- running
Runner = Callable[[RunConfig, bool], Any]


def simulate(config: RunConfig, quiet: bool) -> Any:
    """The default runner: Flower's in-process simulation."""
    from flowerbed.platform.simulation import run_experiment

    return run_experiment(config, quiet=quiet)


def run_cell(planned: PlannedCell, runner: Runner, verbose: bool = False) -> str:
    """Run (or resume) one cell; record its outcome in ``cell.json``. Return "done" or "failed"."""
    cell, cell_dir = planned.cell, planned.cell_dir
    cell_dir.mkdir(parents=True, exist_ok=True)
    config = planned.config
    if planned.state.partial is not None:
        config = parse_run_config({**config.to_flat(), "resume": str(planned.state.partial)})
    record = {
        "cell": cell.name,
        "attack": cell.attack,
        "defence": cell.defence,
        "seed": cell.seed,
        "overrides": cell.overrides,
        "resumed_from": str(planned.state.partial or ""),
    }
    atomic_write_json(cell_dir / CELL_RECORD, {**record, "status": "running"})
    began = time.perf_counter()
    try:
        runner(config, not verbose)
    except Exception as error:  # noqa: BLE001 - a failing cell is recorded and the grid goes on
        message = f"{type(error).__name__}: {error}".strip()
        atomic_write_bytes(cell_dir / ERROR_LOG, traceback.format_exc().encode())
        atomic_write_json(
            cell_dir / CELL_RECORD,
            {**record, "status": "failed", "error": message, "seconds": time.perf_counter() - began},
        )
        return "failed"
    (cell_dir / ERROR_LOG).unlink(missing_ok=True)
    status = "done" if inspect_cell(cell_dir).done is not None else "failed"
    atomic_write_json(
        cell_dir / CELL_RECORD,
        {**record, "status": status, "seconds": time.perf_counter() - began}
        | ({} if status == "done" else {"error": "the run ended without writing summary.json"}),
    )
    return status


def run_grid(
    grid: Grid,
    out: str | Path,
    only: str | None = None,
    runner: Runner = simulate,
    verbose: bool = False,
    console=None,
) -> dict[str, int]:
    """Validate the grid, run every selected cell that is not done, then write the report.

    Returns counts: ``{"skipped": ..., "done": ..., "failed": ...}`` for the selected cells.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = console or Console(highlight=False)
    out = Path(out).expanduser().resolve()
    _, selected = plan_grid(grid, out, only)  # raises before anything is written or run
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST, grid.manifest())

    counts = {"skipped": 0, "done": 0, "failed": 0}
    todo = [p for p in selected if p.state.done is None]
    counts["skipped"] = len(selected) - len(todo)
    for seed in sorted({p.cell.seed for p in todo}) if grid.pretrain_rounds else []:
        config = pretraining_config(grid.base, grid.pretrain_rounds, seed, out)
        began = time.perf_counter()
        try:
            weights, ran = ensure_pretrained(config, seed, out, runner, quiet=not verbose)
        except Exception as error:  # noqa: BLE001 - the seed's cells cannot run; the other seeds can
            log = pretraining_error_log(out, seed)
            log.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(log, traceback.format_exc().encode())
            blocked = [p for p in todo if p.cell.seed == seed]
            todo = [p for p in todo if p.cell.seed != seed]
            counts["failed"] += len(blocked)
            console.print(
                f"[red]pre-training seed {seed} failed[/] ({type(error).__name__}: {error}); its {len(blocked)} "
                f"cell(s) did not run (rerun to retry; traceback in {log})"
            )
            continue
        if ran:
            console.print(f"pre-trained seed {seed}: {grid.pretrain_rounds} clean FedAvg rounds ({time.perf_counter() - began:.0f} s) -> {weights}")
    console.print(
        f"[bold]bench {grid.name}[/]: {len(selected)} cells selected, {counts['skipped']} already done, "
        f"{len(todo)} to run; results in {out}"
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("cells", total=len(selected), completed=counts["skipped"] + counts["failed"])
        try:
            _run_cells(todo, runner, verbose, progress, task, counts)
        except KeyboardInterrupt:  # keep what finished: tabulate it, then stop
            progress.stop()
            write_report(out)
            raise
        progress.update(task, description="cells")
    written = write_report(out)
    console.print(
        f"bench {grid.name}: {counts['done']} run, {counts['failed']} failed, {counts['skipped']} skipped (already done)"
    )
    for path in written:
        console.print(f"wrote {path}")
    return counts


def _run_cells(todo: list[PlannedCell], runner: Runner, verbose: bool, progress, task, counts: dict[str, int]) -> None:
    for planned in todo:
        action = "resuming" if planned.state.partial is not None else "running"
        progress.update(task, description=f"{action} {planned.cell.name}")
        began = time.perf_counter()
        status = run_cell(planned, runner, verbose=verbose)
        counts[status] += 1
        progress.advance(task)
        progress.console.print(f"{status:>6} {planned.cell.name} ({time.perf_counter() - began:.0f} s){_headline(planned.cell_dir)}")


def _headline(cell_dir: Path) -> str:
    """A short result line for the terminal, read back from the cell's summary.json."""
    state = inspect_cell(cell_dir)
    if state.done is None:
        return ": " + str(read_cell_record(cell_dir).get("error", ""))[:300]
    row = cell_row(read_cell_record(cell_dir) | {"cell": cell_dir.name}, cell_dir)
    parts = [f"clean {row['clean_acc']:.3f}" if isinstance(row["clean_acc"], float) else ""]
    if isinstance(row["asr_final_mean"], float):
        parts.append(f"ASR {row['asr_final_mean']:.3f}")
    if isinstance(row["detection_recall"], float):
        parts.append(f"recall {row['detection_recall']:.2f}")
    return ": " + ", ".join(p for p in parts if p)


# ----------------------------------------------------------------------------- results from files
def cell_row(entry: dict[str, Any], cell_dir: Path) -> dict[str, Any]:
    """One results.csv row, read from the cell's folder (summary.json of its finished run)."""
    state = inspect_cell(cell_dir)
    record = read_cell_record(cell_dir)
    row: dict[str, Any] = {key: "" for key in BASE_COLUMNS}
    row.update(cell=entry["cell"], attack=entry["attack"], defence=entry["defence"], seed=entry["seed"], status=state.status)
    row["backdoors"] = {}
    run_dir = state.done or state.partial
    if run_dir is None:
        row["error"] = record.get("error", "") if row["status"] == "failed" else ""
        return row
    row["run_dir"] = str(run_dir)
    saved = json.loads((run_dir / CONFIG).read_text())
    row["rounds_planned"] = saved.get("num-server-rounds", "")
    if state.done is None:  # interrupted: report how far it got, no results
        row["rounds_completed"] = len(read_metrics(run_dir))
        row["error"] = record.get("error", "") if row["status"] == "failed" else ""
        return row
    summary = json.loads((run_dir / SUMMARY).read_text())
    row["rounds_completed"] = summary.get("rounds_completed", "")
    row["clean_acc"] = summary.get("final", {}).get("clean_acc", "")
    best = summary.get("best", {})
    row["best_clean_acc"] = best.get("value", "") if best.get("metric") == "clean_acc" else ""
    row["seconds"] = summary.get("seconds_total", "")
    row["wall_seconds"] = record.get("seconds", "") if record.get("status") == "done" else ""
    detection = summary.get("detection", {})
    for key in ("precision", "recall", "fpr"):
        row[f"detection_{key}"] = detection.get(key, "")
    backdoors = summary.get("backdoors", {})
    row["backdoors"] = {name: {f: scores.get(f, "") for f in BACKDOOR_FIELDS} for name, scores in backdoors.items()}
    for column, fieldname in (
        ("asr_final_mean", "final_asr"),
        ("asr_max_mean", "max_asr"),
        ("asr_plus_10_mean", "asr_plus_10"),
        ("asr_plus_30_mean", "asr_plus_30"),
    ):
        values = [scores[fieldname] for scores in backdoors.values() if isinstance(scores.get(fieldname), (int, float))]
        # The mean over backdoors only when every backdoor has the value (no mean of a subset).
        row[column] = float(sum(values) / len(values)) if values and len(values) == len(backdoors) else ""
    return row


def load_cells(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The grid manifest and its cells (from grid.json; without it, every cells/*/cell.json)."""
    out = Path(out)
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        entries = [
            {"cell": c["name"], "attack": c["attack"], "defence": c["defence"], "seed": c["seed"]} for c in manifest["cells"]
        ]
        return manifest, entries
    records = [read_cell_record(p) for p in sorted((out / CELLS).glob("*")) if (p / CELL_RECORD).is_file()]
    if not records:
        raise ConfigError([f"{out} holds no bench results (no {MANIFEST}, no {CELLS}/*/{CELL_RECORD})"])
    entries = [{k: r[k] for k in ("cell", "attack", "defence", "seed")} for r in records]
    manifest = {
        "name": out.name,
        "attacks": list(dict.fromkeys(e["attack"] for e in entries)),
        "defences": list(dict.fromkeys(e["defence"] for e in entries)),
        "seeds": sorted({e["seed"] for e in entries}),
    }
    return manifest, entries


def collect_rows(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    manifest, entries = load_cells(out)
    return manifest, [cell_row(entry, cell_dir_of(out, entry["cell"])) for entry in entries]


def backdoor_names(rows: Iterable[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(name for row in rows for name in row["backdoors"]))


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    names = backdoor_names(rows)
    columns = list(BASE_COLUMNS) + [f"{name}.{f}" for name in names for f in BACKDOOR_FIELDS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = {key: row[key] for key in BASE_COLUMNS}
        for name in names:
            for f in BACKDOOR_FIELDS:
                flat[f"{name}.{f}"] = row["backdoors"].get(name, {}).get(f, "")
        writer.writerow(flat)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


# ----------------------------------------------------------------------------- aggregation over seeds
def mean_std(values: list[Any]) -> tuple[float, float | None, int] | None:
    """Mean, sample standard deviation (None for one value) and count of the numeric values."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not numbers:
        return None
    mean = sum(numbers) / len(numbers)
    if len(numbers) == 1:
        return mean, None, 1
    variance = sum((x - mean) ** 2 for x in numbers) / (len(numbers) - 1)
    return mean, math.sqrt(variance), len(numbers)


def format_stat(values: list[Any], total: int | None = None) -> str:
    """``0.934 ± 0.012`` (mean ± sample std over seeds); ``(n/N)`` when some seeds lack the value."""
    stat = mean_std(values)
    if stat is None:
        return "—"
    mean, std, count = stat
    text = f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"
    if total is not None and count < total:
        text += f" ({count}/{total})"
    return text


def _groups(rows: list[dict[str, Any]], manifest: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    groups = []
    for attack in manifest["attacks"]:
        for defence in manifest["defences"]:
            members = [r for r in rows if r["attack"] == attack and r["defence"] == defence]
            if members:
                groups.append((attack, defence, members))
    return groups


EXPLANATION = (
    "Made by `flowerbed bench` from the run folders under `cells/` (summary.json, metrics.jsonl). "
    "Values are mean ± sample standard deviation over the finished seeds (one seed: the value alone; "
    "`(n/N)`: only n of the N finished seeds have it). ASR is the final-round attack success rate, "
    "averaged over an attack's backdoors in the overview; *ASR +10*/*+30* is the ASR 10/30 rounds after a "
    "backdoor's last attack round (— when the run ends sooner). Detection scores are pooled over all "
    "rounds of a run; precision is — when the defence flagged nobody, and all three are — for a "
    "strategy that does not report whom it flagged."
)


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def markdown_report(rows: list[dict[str, Any]], manifest: dict[str, Any], figures: list[str]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    seeds = manifest.get("seeds", [])
    lines = [
        f"# Bench: {manifest['name']}",
        "",
        f"{_count(manifest['attacks'], 'attack')} × {_count(manifest['defences'], 'defence')} × {_count(seeds, 'seed')} "
        f"(seeds {', '.join(str(s) for s in seeds)}) = {len(rows)} cells: "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        + ".",
        "",
        *(
            [
                f"Every cell starts from a model pre-trained for {manifest['pretrain_rounds']} clean FedAvg rounds "
                "on the base federation (one per seed, in `pretraining/`); round numbers count from there.",
                "",
            ]
            if manifest.get("pretrain_rounds")
            else []
        ),
        EXPLANATION,
        "",
        "## Overview",
        "",
        "| attack | defence | seeds done | clean acc | final ASR | ASR +10 | ASR +30 | det. precision | det. recall | det. FPR |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for attack, defence, members in _groups(rows, manifest):
        done = [r for r in members if r["status"] == "done"]
        n = len(done)
        has_backdoors = any(r["backdoors"] for r in done)
        cells = [
            attack,
            defence,
            f"{n}/{len(members)}",
            format_stat([r["clean_acc"] for r in done], n),
            format_stat([r["asr_final_mean"] for r in done], n) if has_backdoors else "—",
            format_stat([r["asr_plus_10_mean"] for r in done], n) if has_backdoors else "—",
            format_stat([r["asr_plus_30_mean"] for r in done], n) if has_backdoors else "—",
            format_stat([r["detection_precision"] for r in done], n),
            format_stat([r["detection_recall"] for r in done], n),
            format_stat([r["detection_fpr"] for r in done], n),
        ]
        lines.append("| " + " | ".join(cells) + " |")

    backdoor_lines = []
    for attack, defence, members in _groups(rows, manifest):
        done = [r for r in members if r["status"] == "done"]
        for name in backdoor_names(done):
            entries = [r["backdoors"].get(name, {}) for r in done]
            last = sorted({e.get("last_attack_round") for e in entries if isinstance(e.get("last_attack_round"), int)})
            backdoor_lines.append(
                "| "
                + " | ".join(
                    [
                        attack,
                        defence,
                        name,
                        ", ".join(str(r) for r in last) or "—",
                        format_stat([e.get("final_asr") for e in entries], len(done)),
                        format_stat([e.get("max_asr") for e in entries], len(done)),
                        format_stat([e.get("asr_plus_10") for e in entries], len(done)),
                        format_stat([e.get("asr_plus_30") for e in entries], len(done)),
                    ]
                )
                + " |"
            )
    if backdoor_lines:
        lines += [
            "",
            "## Backdoors",
            "",
            "| attack | defence | backdoor | last attack round | final ASR | max ASR | ASR +10 | ASR +30 |",
            "|---|---|---|---|---|---|---|---|",
            *backdoor_lines,
        ]

    unfinished = [r for r in rows if r["status"] != "done"]
    if unfinished:
        lines += ["", "## Cells without results", "", "| cell | status | rounds | error |", "|---|---|---|---|"]
        for row in unfinished:
            rounds = f"{row['rounds_completed']}/{row['rounds_planned']}" if row["rounds_planned"] != "" else "—"
            error = str(row["error"]).replace("|", "\\|").replace("\n", " ")[:300] or "—"
            lines.append(f"| {row['cell']} | {row['status']} | {rounds} | {error} |")

    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures
def _heatmap(matrix: list[list[float | None]], rows: list[str], columns: list[str], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    figure, axis = plt.subplots(figsize=(1.1 * len(columns) + 2.5, 0.45 * len(rows) + 1.6))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = axis.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_xticks(range(len(columns)), columns, rotation=35, ha="right")
    axis.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(columns)):
            if not np.isnan(values[i, j]):
                axis.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center",
                          color="white" if values[i, j] < 0.6 else "black", fontsize="small")
    axis.set_title(textwrap.fill(title, width=max(28, int(10 * figure.get_figwidth()))), fontsize="medium")
    figure.colorbar(image, ax=axis, fraction=0.04)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _cell_mean(rows: list[dict[str, Any]], attack: str, defence: str, column: str) -> float | None:
    stat = mean_std([r[column] for r in rows if r["attack"] == attack and r["defence"] == defence and r["status"] == "done"])
    return None if stat is None else stat[0]


def make_figures(out: Path, rows: list[dict[str, Any]], manifest: dict[str, Any]) -> list[Path]:
    """Heatmaps (defence × attack) and per-defence ASR-over-rounds plots; return their paths."""
    out = Path(out)
    defences = manifest["defences"]
    written: list[Path] = []
    attacked = [a for a in manifest["attacks"] if any(r["backdoors"] for r in rows if r["attack"] == a)]
    if attacked and any(r["status"] == "done" for r in rows):
        matrix = [[_cell_mean(rows, a, d, "asr_final_mean") for a in attacked] for d in defences]
        written.append(
            _heatmap(matrix, defences, attacked, f"{manifest['name']}: final ASR (mean over backdoors and seeds)",
                     out / "heatmap_asr.png")
        )
    if any(r["status"] == "done" for r in rows):
        attacks = manifest["attacks"]
        matrix = [[_cell_mean(rows, a, d, "clean_acc") for a in attacks] for d in defences]
        written.append(
            _heatmap(matrix, defences, attacks, f"{manifest['name']}: final clean accuracy (mean over seeds)",
                     out / "heatmap_clean_acc.png")
        )
    plots = out / "plots"
    for defence in defences:
        members = [r for r in rows if r["defence"] == defence and r["status"] == "done"]
        if members:
            plots.mkdir(exist_ok=True)
            written.append(_rounds_plot(members, manifest, defence, plots / f"asr_rounds_{defence}.png"))
    return written


def _round_series(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Per round: the ASR averaged over the run's backdoors, and the clean accuracy (from metrics.jsonl)."""
    asr, clean = {}, {}
    for record in read_metrics(run_dir):
        values = [v for v in record.get("asr", {}).values() if isinstance(v, (int, float))]
        if values:
            asr[record["round"]] = sum(values) / len(values)
        if isinstance(record.get("clean_acc"), (int, float)):
            clean[record["round"]] = float(record["clean_acc"])
    return asr, clean


def _attack_windows(run_dir: Path) -> list[tuple[int, int]]:
    """The attack windows (first, last round) of a run, from its attackers.json."""
    path = run_dir / ATTACKERS
    if not path.is_file():
        return []
    attackers = json.loads(path.read_text()).get("attackers", {})
    return sorted({(a["schedule"]["start"], a["schedule"]["end"]) for a in attackers.values()})


def _rounds_plot(rows: list[dict[str, Any]], manifest: dict[str, Any], defence: str, path: Path) -> Path:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    colours = matplotlib.colormaps["tab10"]
    for index, attack in enumerate(manifest["attacks"]):
        runs = [_round_series(Path(r["run_dir"])) for r in rows if r["attack"] == attack]
        if not runs:
            continue
        colour = colours(index % 10)
        windows = {w for r in rows if r["attack"] == attack for w in _attack_windows(Path(r["run_dir"]))}
        for start, end in sorted(windows):
            top.axvspan(start - 0.5, end + 0.5, color=colour, alpha=0.07)
        for axis, which in ((top, 0), (bottom, 1)):
            series = [run[which] for run in runs if run[which]]
            if not series:
                continue
            rounds = sorted(set.intersection(*(set(s) for s in series)))
            values = np.array([[s[r] for r in rounds] for s in series])
            axis.plot(rounds, values.mean(axis=0), color=colour, label=f"{attack} (n={len(series)})")
            if len(series) > 1:
                axis.fill_between(rounds, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.15)
    top.set(ylabel="ASR (mean over backdoors)", ylim=(-0.02, 1.02),
            title=f"{manifest['name']}: {defence} (shaded: attack windows; band: min–max over seeds)")
    bottom.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    bottom.set(xlabel="round", ylabel="clean accuracy", ylim=(-0.02, 1.02))
    for axis in (top, bottom):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="best", fontsize="small")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(out: str | Path) -> list[Path]:
    """Re-make results.csv, results.md and the figures from the cell folders under ``out``."""
    out = Path(out).expanduser().resolve()
    manifest, rows = collect_rows(out)
    csv_path = write_csv(rows, out / "results.csv")
    figures = make_figures(out, rows, manifest)
    markdown = markdown_report(rows, manifest, [str(f.relative_to(out)) for f in figures])
    md_path = out / "results.md"
    atomic_write_bytes(md_path, markdown.encode())
    return [csv_path, md_path, *figures]


# ----------------------------------------------------------------------------- CLI
def default_out(grid: Grid) -> Path:
    return Path("bench-results") / grid.name


def _command_bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if args.report:
        if args.grid:
            raise ConfigError(["--report OUT re-makes the report of OUT; give no grid file with it"])
        for path in write_report(args.report):
            console.print(f"wrote {path}")
        return 0
    if not args.grid:
        raise ConfigError(["give a grid file (flowerbed bench GRID.toml) or --report OUT"])
    grid = read_grid(args.grid)
    out = Path(args.out) if args.out else default_out(grid)
    if args.dry_run:
        planned, selected = plan_grid(grid, out, args.only)
        table = Table(title=f"bench {grid.name}: {len(selected)} of {len(planned)} cells (output {out})")
        table.add_column("cell", no_wrap=True)
        for column in ("status", "attack", "rounds"):
            table.add_column(column)
        for p in selected:
            config = p.config
            attack = ",".join(config.attack.name) if config.attack.num_attackers else "none"
            table.add_row(
                p.cell.name,
                "resume" if p.state.partial else p.state.status,
                f"{attack} ×{config.attack.num_attackers}",
                str(config.num_server_rounds),
            )
        console.print(table)
        return 0
    counts = run_grid(grid, out, only=args.only, verbose=args.verbose, console=console)
    return 1 if counts["failed"] else 0


def _help_text() -> str:
    """The module docstring from the usage lines down to the end of the grid format."""
    text = (__doc__ or "").replace("``", "`")
    return text[text.index("    flowerbed bench") : text.index("A *cell* is")].rstrip()


def add_bench_command(commands) -> None:
    """Add ``flowerbed bench`` to the CLI's subparsers."""
    bench = commands.add_parser(
        "bench",
        help="run a grid of experiments (attacks × defences × seeds), resumably, and tabulate it",
        description=_help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("grid", nargs="?", help="grid TOML file (see experiments/bench-*.toml)")
    bench.add_argument("--out", help="output folder (default: bench-results/<grid name>)")
    bench.add_argument("--only", metavar="FILTER", help="run only some cells: attack=a,b,defence=c,seed=0")
    bench.add_argument("--dry-run", action="store_true", help="validate the grid and list its cells; run nothing")
    bench.add_argument("--report", metavar="OUT", help="re-make results.csv/.md and the figures of OUT; run nothing")
    bench.add_argument("--verbose", action="store_true", help="print every round of every cell")
    bench.set_defaults(handler=_command_bench)
