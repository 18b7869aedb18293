"""The report of a ``flowerbed bench`` output folder, finished or partial: tables and figures.

Everything is read back from the folder's files (grid.json, cell.json and the run
folders' summary.json, metrics.jsonl, attackers.json), never from memory:
``results.csv`` (one row per cell) and ``results.md`` (mean ± sample std over seeds),
made in ``tables.py``; the defence × attack heatmaps and the ASR-over-rounds plots, made
in ``figures.py``. :func:`write_report` makes them all (``flowerbed bench --report OUT``).
"""

from __future__ import annotations

from pathlib import Path

from flowerbed.bench.figures import figure_paths, make_figures
from flowerbed.bench.tables import collect_rows, markdown_report, write_csv
from flowerbed.platform.recorder import atomic_write_bytes


def write_report(out: str | Path, figures: bool = True) -> list[Path]:
    """Re-make results.csv, results.md and the figures from the cell folders under ``out``.

    ``figures=False`` re-makes the two tables only (1-2 s for a hundred cells, against
    the figures' 8: the bench does it after every cell, so a killed grid leaves current tables); results.md then links the
    figures already on disk, as the last full report drew them.
    """
    out = Path(out).expanduser().resolve()
    manifest, rows = collect_rows(out)
    csv_path = write_csv(rows, out / "results.csv")
    if figures:
        made = make_figures(out, rows, manifest)
        linked = made
    else:
        made, linked = [], [path for path in figure_paths(out, manifest) if path.is_file()]
    markdown = markdown_report(rows, manifest, [str(f.relative_to(out)) for f in linked])
    md_path = out / "results.md"
    atomic_write_bytes(md_path, markdown.encode())
    return [csv_path, md_path, *made]
