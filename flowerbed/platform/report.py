"""Plots and tables made from a run folder's files (never from memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowerbed.platform.recorder import ATTACKERS, SUMMARY, read_json_object, read_metrics

NOT_PLOTTED = {"round", "seconds"}


def _scalar_series(rounds: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for record in rounds:
        for key, value in record.items():
            if key not in NOT_PLOTTED and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, []).append((record["round"], float(value)))
    return series


def local_asr_points(rounds: list[dict[str, Any]], backdoor_name: str) -> list[tuple[int, float]]:
    """(round, mean local ASR of ``backdoor_name`` over the attackers that trained it that round)."""
    points = []
    for record in rounds:
        rates = [entry[backdoor_name] for entry in record.get("local_asr", {}).values() if backdoor_name in entry]
        if rates:
            points.append((record["round"], sum(rates) / len(rates)))
    return points


def attack_windows(run_dir: Path) -> list[tuple[int, int]]:
    """The attack windows (first, last round) of a run, from its attackers.json."""
    path = run_dir / ATTACKERS
    if not path.exists():
        return []
    attackers = (read_json_object(path) or {}).get("attackers", {})  # damaged: no windows shaded
    try:
        return sorted({(a["schedule"]["start"], a["schedule"]["end"]) for a in attackers.values()})
    except (AttributeError, KeyError, TypeError):
        return []


def make_plots(run_dir: str | Path) -> list[Path]:
    """Write ``plots/accuracy.png`` (and ``asr.png``, ``update_norms.png``, ``metrics.png`` where they apply); return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rounds = read_metrics(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    written: list[Path] = []
    if not rounds:
        return written
    series = _scalar_series(rounds)
    windows = attack_windows(run_dir)

    def shade(axis) -> None:
        for index, (start, end) in enumerate(windows):
            axis.axvspan(start - 0.5, end + 0.5, color="tab:red", alpha=0.08, label="attack window" if index == 0 else None)

    if "clean_acc" in series:
        figure, axis = plt.subplots(figsize=(7, 4))
        rounds_, values = zip(*series["clean_acc"])
        axis.plot(rounds_, values, label="clean accuracy", color="black")
        if "clean_loss" in series:
            twin = axis.twinx()
            loss_rounds, losses = zip(*series["clean_loss"])
            twin.plot(loss_rounds, losses, label="clean loss", color="tab:gray", linestyle="--")
            twin.set_ylabel("loss")
        shade(axis)
        axis.set(xlabel="round", ylabel="accuracy", ylim=(0, 1), title=run_dir.name)
        axis.legend(loc="lower right")
        written.append(_save(figure, plots / "accuracy.png"))

    asr_names = sorted({name for record in rounds for name in record.get("asr", {})})
    if asr_names:
        figure, axis = plt.subplots(figsize=(7, 4))
        for name in asr_names:
            points = [(r["round"], r["asr"][name]) for r in rounds if name in r.get("asr", {})]
            (line,) = axis.plot(*zip(*points), label=f"ASR {name}")
            local = local_asr_points(rounds, name)
            if local:
                axis.plot(*zip(*local), "o", markersize=3, color=line.get_color(), label=f"{name} on attackers' data")
        if "clean_acc" in series:
            axis.plot(*zip(*series["clean_acc"]), label="clean accuracy", color="black", linestyle="--")
        shade(axis)
        axis.set(xlabel="round", ylabel="rate", ylim=(0, 1.02), title=f"{run_dir.name}: backdoors")
        axis.legend(loc="best", fontsize="small")
        written.append(_save(figure, plots / "asr.png"))

    if any(record.get("update_norms") for record in rounds):
        figure, axis = plt.subplots(figsize=(7, 4))
        for is_attacker, color, label in ((False, "tab:gray", "benign client"), (True, "tab:red", "attacker")):
            points = [
                (record["round"], norm)
                for record in rounds
                for pid, norm in record.get("update_norms", {}).items()
                if (int(pid) in record.get("attackers", [])) == is_attacker
            ]
            if points:
                axis.scatter(*zip(*points), s=9, color=color, label=label, alpha=0.7)
        shade(axis)
        axis.set(xlabel="round", ylabel="L2 norm of the update", yscale="log", title=f"{run_dir.name}: update norms")
        axis.legend(loc="best", fontsize="small")
        written.append(_save(figure, plots / "update_norms.png"))

    others = [key for key in series if key not in ("clean_acc", "clean_loss")]
    if others:
        figure, axes = plt.subplots(len(others), 1, figsize=(7, 2.2 * len(others)), sharex=True, squeeze=False)
        for axis, key in zip(axes[:, 0], others):
            axis.plot(*zip(*series[key]))
            axis.set_ylabel(key, fontsize="small")
        axes[-1, 0].set_xlabel("round")
        written.append(_save(figure, plots / "metrics.png"))
    return written


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def summary_table(run_dir: str | Path):
    """A rich Table of the run's summary (final values, best value, backdoors, detection)."""
    from rich.table import Table

    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY
    rounds = read_metrics(run_dir)
    summary = read_json_object(summary_path) if summary_path.exists() else {}
    damaged = summary is None
    summary = summary or {}
    table = Table(title=f"{run_dir.name} ({len(rounds)} rounds recorded)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    final = summary.get("final") or (rounds[-1] if rounds else {})
    for key, value in final.items():
        if isinstance(value, float) or value in ("nan", "inf", "-inf"):  # the recorder writes NaN/Inf as strings
            table.add_row(f"final {key}", _number(value))
        elif isinstance(value, dict) and key == "asr":
            for name, asr in value.items():
                table.add_row(f"final ASR {name}", _number(asr))
    if "best" in summary:
        best = summary["best"]
        table.add_row(f"best {best['metric']}", f"{_number(best['value'])} (round {best['round']})")
    for name, entry in summary.get("backdoors", {}).items():
        for key in ("asr_plus_10", "asr_plus_30", "rounds_until_below_50", "local_asr_mean"):
            if key in entry:
                table.add_row(f"{name} {key}", f"{entry[key]:.4f}" if isinstance(entry[key], float) else str(entry[key]))
    for key, value in summary.get("update_norms", {}).items():
        table.add_row(f"update norm {key.replace('_', ' ')}", f"{value:.4g}")
    for key, value in summary.get("detection", {}).items():
        table.add_row(f"detection {key}", f"{value:.4f}")
    if "seconds_total" in summary:
        table.add_row("wall time (s)", f"{summary['seconds_total']:.1f}")
    if damaged:
        table.add_row("status", "summary.json is damaged: the values above are the last recorded round's")
    elif not summary:
        table.add_row("status", "no summary.json: the run did not finish (metrics.jsonl has the finished rounds)")
    if rounds and "stopped" in rounds[-1]:
        table.add_row("stopped", str(rounds[-1]["stopped"]))
    return table


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else str(value)
