"""Run the planned cells of a ``flowerbed bench`` grid, each recorded in its folder, and write the report.

:func:`run_grid` plans the grid (``plan.py``), pre-trains each seed's model if the grid
asks for it (``pretraining.py``), runs every cell not done yet with a *runner* (by default
:func:`simulate`, Flower's in-process simulation), and re-makes the report (``report.py``)
after every cell and at the end.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowerbed.bench.cells import (
    CELL_RECORD,
    ERROR_LOG,
    MANIFEST,
    inspect_cell,
    read_cell_record,
    supersede_cells,
)
from flowerbed.bench.grid import Grid, select_cells
from flowerbed.bench.plan import PlannedCell, plan_grid
from flowerbed.bench.pretraining import ensure_pretrained, pretraining_config, pretraining_error_log
from flowerbed.bench.report import write_report
from flowerbed.bench.tables import cell_row
from flowerbed.platform.config import RunConfig, parse_run_config
from flowerbed.platform.recorder import atomic_write_bytes, atomic_write_json

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
