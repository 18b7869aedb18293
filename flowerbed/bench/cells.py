"""A ``flowerbed bench`` output folder on disk, and the state of a cell's folder in it.

``<out>/grid.json`` is the grid's manifest; ``<out>/cells/<cell>/`` holds the cell's
run folders, ``cell.json`` (the bench's record of its last attempt) and
``error.txt`` (the traceback when that attempt raised). A cell is done, interrupted
(a run folder with a checkpoint to resume), failed or pending (:class:`CellState`).
``<out>/superseded/<time>/<cell>/`` keeps cells set aside to be run again (``--rerun``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowerbed.platform.config import config_differences
from flowerbed.platform.recorder import CHECKPOINT, CONFIG, SUMMARY

# Keys of a saved config.json that may differ from the cell's config without making the run stale.
IGNORED_WHEN_COMPARING = ("output-dir", "resume")

MANIFEST = "grid.json"
CELL_RECORD = "cell.json"
ERROR_LOG = "error.txt"
CELLS = "cells"
SUPERSEDED = "superseded"


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


def supersede_cells(out: Path, cell_names: list[str]) -> tuple[Path, list[str]]:
    """Move the folders of ``cell_names`` (those that exist) to ``<out>/superseded/<UTC time>/``.

    Nothing is deleted: the old runs stay readable there, and the cells are pending again.
    Returns that folder and the names moved.
    """
    target = Path(out) / SUPERSEDED / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    moved = []
    for name in cell_names:
        cell_dir = cell_dir_of(out, name)
        if cell_dir.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            cell_dir.rename(target / name)
            moved.append(name)
    return target, moved


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


def stale_keys(saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """The run keys in which a saved run's config differs from the cell's (see :func:`config_differences`)."""
    return config_differences(saved, current, ignore=IGNORED_WHEN_COMPARING + ignore)
