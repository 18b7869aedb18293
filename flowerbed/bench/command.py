"""``flowerbed bench``: run a grid of experiments (attacks × defences × seeds) and tabulate it.

    flowerbed bench experiments/bench-dmba.toml                 # run (or resume) the whole grid
    flowerbed bench experiments/bench-dmba.toml --dry-run       # list the cells and their state
    flowerbed bench experiments/bench-dmba.toml --only attack=dmba,badnets,defence=krum
    flowerbed bench experiments/bench-dmba.toml --rerun defence=flame --only defence=flame   # redo finished cells
    flowerbed bench experiments/bench-dmba.toml --stop-after 2h # start no cell after 2 hours; rerun to continue
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
anything runs. ``--rerun FILTER`` (the ``--only`` syntax) sets the matching cells'
folders aside under ``<out>/superseded/<time>/`` first, so they run again — after a
code change the config comparison cannot see, or to replace a run with a different
config; the run itself covers the ``--only`` selection (all cells without it).

Outputs in ``<out>`` are made from the run folders' files only (summary.json,
metrics.jsonl), never from memory: ``results.csv`` (one row per cell),
``results.md`` (mean ± sample std over seeds), ``heatmap_asr.png`` (defence ×
attack, mean final ASR), ``heatmap_clean_acc.png`` and
``plots/asr_rounds_<defence>.png`` (ASR and clean accuracy over rounds, one line
per attack, mean over seeds with a min–max band). In results.csv, ``seconds`` is
the run's summed round time (summary.json) and ``wall_seconds`` the bench's
clock for the cell's last attempt (Ray start-up included); per-backdoor columns
are ``<backdoor>.<final_asr|max_asr|asr_plus_10|asr_plus_30|last_attack_round>``
and stay empty where a cell has no such backdoor. The two tables are re-made after
every cell (a killed grid leaves them current), the figures when the call ends.

This module plans and runs the grid and holds the command; the grid file is read
in ``bench_grid.py``, the output folder's layout and cell states are in
``bench_cells.py``, the tables and figures in ``bench_report.py``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowerbed.bench.cells import (
    CELL_RECORD,
    ERROR_LOG,
    MANIFEST,
    CellState,
    cell_dir_of,
    inspect_cell,
    read_cell_record,
    stale_keys,
    supersede_cells,
)
from flowerbed.bench.grid import NO_ATTACK, Cell, Grid, read_grid, select_cells
from flowerbed.bench.pretraining import (
    check_existing,
    ensure_pretrained,
    pretraining_config,
    pretraining_error_log,
)
from flowerbed.bench.report import cell_row, write_report
from flowerbed.platform.config import ConfigError, RunConfig, parse_run_config
from flowerbed.platform.recorder import CONFIG, atomic_write_bytes, atomic_write_json


# ----------------------------------------------------------------------------- validation
@dataclass
class PlannedCell:
    cell: Cell
    cell_dir: Path
    config: RunConfig
    state: CellState


def plan_grid(
    grid: Grid, out: Path, only: str | None = None, set_aside: frozenset[str] = frozenset()
) -> tuple[list[PlannedCell], list[PlannedCell]]:
    """Validate every cell of the grid (all of them, also those ``--only`` leaves out) and check
    existing runs against it. Return (every cell, the selected cells); raise :class:`ConfigError`
    listing every problem (a problem shared by several cells is listed once, with its cells).
    Cells named in ``set_aside`` are planned as pending, whatever their folders hold (``--rerun``)."""
    from flowerbed.platform.run_parts import build_run

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
            # Every part's own checks (triggers, attack parameters, the defence's bounds such as
            # Bulyan's n >= 4f + 3); loads the dataset (once per process), so missing data files
            # fail here, before any cell runs.
            build_run(config)
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
        state = CellState(cell_dir) if cell.name in set_aside else inspect_cell(cell_dir)
        existing = state.done or state.partial
        if existing is not None:
            saved = json.loads((existing / CONFIG).read_text())
            # With pre-training, model.init is this out folder's own pre-trained weights (checked
            # against the base config by check_existing); its absolute path changes if the folder moves.
            bench_controlled = ("model.init",) if grid.pretrain_rounds else ()
            changed = stale_keys(saved, config.resolved_json_dict(), ignore=bench_controlled)
            if changed:
                problem = (
                    f"cell {cell.name}: the existing run {existing} was made with a different config "
                    f"(keys {', '.join(changed)}); run it again with --rerun attack={cell.attack},"
                    f"defence={cell.defence},seed={cell.seed} (the old folder is set aside), or give another --out"
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
    rerun: str | None = None,
    stop_after: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, int]:
    """Validate the grid, run every selected cell that is not done, then write the report.

    ``rerun``: a filter of cells whose existing folders are set aside first, so they run again.
    ``stop_after``: seconds (from the call, pre-training included) after which no further cell
    starts; the cell running then finishes, the report is written, and a later call continues.

    Returns counts: ``{"skipped": ..., "done": ..., "failed": ..., "left": ...}`` for the selected
    cells (``left``: not started because of ``stop_after``).
    """
    started = clock()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = console or Console(highlight=False)
    out = Path(out).expanduser().resolve()
    rerun_names = frozenset(cell.name for cell in select_cells(grid.cells(), rerun, grid, "--rerun")) if rerun else frozenset()
    _, selected = plan_grid(grid, out, only, set_aside=rerun_names)  # raises before anything is moved, written or run
    if rerun_names:
        target, moved = supersede_cells(out, sorted(rerun_names))  # moved, never deleted
        console.print(f"--rerun: {len(moved)} cell folder(s) set aside in {target}" if moved else "--rerun: no cell had run yet")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST, grid.manifest())

    counts = {"skipped": 0, "done": 0, "failed": 0, "left": 0}
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
            deadline = None if stop_after is None else started + stop_after
            _run_cells(todo, out, runner, verbose, progress, task, counts, deadline, clock)
        except KeyboardInterrupt:  # keep what finished: tabulate it, then stop
            progress.stop()
            write_report(out)
            raise
        progress.update(task, description="cells")
    written = write_report(out)
    console.print(
        f"bench {grid.name}: {counts['done']} run, {counts['failed']} failed, {counts['skipped']} skipped (already done)"
        + (f", {counts['left']} not started (--stop-after; run the same command to continue)" if counts["left"] else "")
    )
    for path in written:
        console.print(f"wrote {path}")
    return counts


def _run_cells(
    todo: list[PlannedCell],
    out: Path,
    runner: Runner,
    verbose: bool,
    progress,
    task,
    counts: dict[str, int],
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    for index, planned in enumerate(todo):
        if deadline is not None and clock() >= deadline:
            counts["left"] = len(todo) - index
            progress.console.print(f"--stop-after: time is up; {counts['left']} cell(s) not started")
            return
        action = "resuming" if planned.state.partial is not None else "running"
        progress.update(task, description=f"{action} {planned.cell.name}")
        began = time.perf_counter()
        status = run_cell(planned, runner, verbose=verbose)
        counts[status] += 1
        write_report(out, figures=False)  # current tables even if the grid is killed before the end
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
        if args.rerun:
            raise ConfigError(["--rerun moves finished cells aside; it does nothing with --dry-run"])
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
    counts = run_grid(
        grid, out, only=args.only, verbose=args.verbose, console=console, rerun=args.rerun, stop_after=args.stop_after
    )
    return 1 if counts["failed"] else 0


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``"90m"``, ``"1.5h"``, ``"600s"`` -> seconds. A unit is required (is "90" minutes or seconds?)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh])\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give a number and a unit s, m or h (e.g. 90m, 2h)")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


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
    bench.add_argument(
        "--rerun",
        metavar="FILTER",
        help="set the matching cells' folders aside (<out>/superseded/<time>/) so they run again; same syntax as --only",
    )
    bench.add_argument(
        "--stop-after",
        metavar="DURATION",
        type=parse_duration,
        help="start no new cell after this long (e.g. 90m, 2h); the running cell finishes; rerun to continue",
    )
    bench.add_argument("--dry-run", action="store_true", help="validate the grid and list its cells; run nothing")
    bench.add_argument("--report", metavar="OUT", help="re-make results.csv/.md and the figures of OUT; run nothing")
    bench.add_argument("--verbose", action="store_true", help="print every round of every cell")
    bench.set_defaults(handler=_command_bench)
