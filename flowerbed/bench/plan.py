"""Plan a ``flowerbed bench`` grid: check every cell's config and its existing runs before anything runs.

:func:`plan_grid` turns the grid's cells into :class:`PlannedCell` s (config, folder,
state) or raises one :class:`ConfigError` that lists every problem. Running the planned
cells is ``run.py``'s job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flowerbed.bench.cells import CellState, cell_dir_of, inspect_cell, stale_keys
from flowerbed.bench.grid import NO_ATTACK, Cell, Grid, select_cells
from flowerbed.bench.pretraining import check_existing, pretraining_config
from flowerbed.platform.config import ConfigError, RunConfig, parse_run_config
from flowerbed.platform.recorder import CONFIG


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
