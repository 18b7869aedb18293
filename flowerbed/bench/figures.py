"""The figures of a ``flowerbed bench`` output folder (matplotlib).

Drawn from the rows of ``tables.py`` and the run folders' metrics.jsonl and attackers.json
(attack windows): the defence × attack heatmaps of final ASR and clean accuracy, and per defence the ASR and clean
accuracy over rounds (``plots/asr_rounds_<defence>.png``); :func:`make_figures`.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from flowerbed.bench.tables import mean_std
from flowerbed.platform.recorder import SUMMARY, read_metrics
from flowerbed.platform.report import attack_windows

# A cell whose clean accuracy is below this share of the grid's best is marked on the ASR
# heatmap: a model that answers one class for everything has ASR 1 for a backdoor aimed at
# that class and 0 for the others, whatever the attack did.
COLLAPSED_SHARE = 0.5


def collapsed_cells(clean: list[list[float | None]]) -> list[list[bool]]:
    """Which cells of a clean-accuracy matrix are below ``COLLAPSED_SHARE`` of its best."""
    best = max((value for row in clean for value in row if value is not None), default=None)
    if best is None:
        return [[False for _ in row] for row in clean]
    return [[value is not None and value < COLLAPSED_SHARE * best for value in row] for row in clean]


def _heatmap(
    matrix: list[list[float | None]],
    rows: list[str],
    columns: list[str],
    title: str,
    path: Path,
    marked: list[list[bool]] | None = None,
    mark_note: str = "",
) -> Path:
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
                mark = "†" if marked and marked[i][j] else ""
                axis.text(j, i, f"{values[i, j]:.2f}{mark}", ha="center", va="center",
                          color="white" if values[i, j] < 0.6 else "black", fontsize="small")
    axis.set_title(textwrap.fill(title, width=max(28, int(10 * figure.get_figwidth()))), fontsize="medium")
    figure.colorbar(image, ax=axis, fraction=0.04)
    if marked and any(any(row) for row in marked):
        axis.set_xlabel(textwrap.fill("† " + mark_note, width=max(28, int(9 * figure.get_figwidth()))), fontsize="small")
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
    asr_heatmap, clean_heatmap, *rounds_plots = figure_paths(out, manifest)
    written: list[Path] = []
    attacked = [a for a in manifest["attacks"] if any(r["backdoors"] for r in rows if r["attack"] == a)]
    if attacked and any(r["status"] == "done" for r in rows):
        matrix = [[_cell_mean(rows, a, d, "asr_final_mean") for a in attacked] for d in defences]
        clean = [[_cell_mean(rows, a, d, "clean_acc") for a in attacked] for d in defences]
        note = (
            f"clean accuracy below {COLLAPSED_SHARE:.0%} of the grid's best: the model has collapsed,"
            " so the ASR says little about the backdoor"
        )
        written.append(
            _heatmap(matrix, defences, attacked, f"{manifest['name']}: final ASR (mean over backdoors and seeds)",
                     asr_heatmap, marked=collapsed_cells(clean), mark_note=note)
        )
    if any(r["status"] == "done" for r in rows):
        attacks = manifest["attacks"]
        matrix = [[_cell_mean(rows, a, d, "clean_acc") for a in attacks] for d in defences]
        written.append(
            _heatmap(matrix, defences, attacks, f"{manifest['name']}: final clean accuracy (mean over seeds)",
                     clean_heatmap)
        )
    for defence, path in zip(defences, rounds_plots):
        members = [r for r in rows if r["defence"] == defence and r["status"] == "done"]
        if members:
            path.parent.mkdir(exist_ok=True)
            written.append(_rounds_plot(members, manifest, defence, path))
    return written


def _round_series(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Per round: the ASR averaged over the run's backdoors (pieces of a combined backdoor left
    out, as in the tables), and the clean accuracy (from metrics.jsonl)."""
    summary = json.loads((run_dir / SUMMARY).read_text()) if (run_dir / SUMMARY).is_file() else {}
    pieces = {name for name, entry in summary.get("backdoors", {}).items() if entry.get("part_of")}
    asr, clean = {}, {}
    for record in read_metrics(run_dir):
        values = [v for k, v in record.get("asr", {}).items() if k not in pieces and isinstance(v, (int, float))]
        if values:
            asr[record["round"]] = sum(values) / len(values)
        if isinstance(record.get("clean_acc"), (int, float)):
            clean[record["round"]] = float(record["clean_acc"])
    return asr, clean


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
        windows = {w for r in rows if r["attack"] == attack for w in attack_windows(Path(r["run_dir"]))}
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


def figure_paths(out: Path, manifest: dict[str, Any]) -> list[Path]:
    """Where :func:`make_figures` puts its figures, in its order (whether made yet or not)."""
    plots = [out / "plots" / f"asr_rounds_{defence}.png" for defence in manifest["defences"]]
    return [out / "heatmap_asr.png", out / "heatmap_clean_acc.png", *plots]
