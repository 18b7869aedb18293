"""The tables of a ``flowerbed bench`` output folder: ``results.csv`` and ``results.md``.

Every cell becomes one row read back from its folder (cell.json and its run folder's
config.json, summary.json, metrics.jsonl), never from memory: :func:`collect_rows`.
:func:`write_csv` writes one line per cell; :func:`markdown_report` the mean ± sample
std over seeds of each (attack, defence) pair. The figures are in ``figures.py``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flowerbed.bench.cells import (
    CELL_RECORD,
    CELLS,
    MANIFEST,
    cell_dir_of,
    inspect_cell,
    read_cell_record,
)
from flowerbed.platform.config import ConfigError
from flowerbed.platform.recorder import (
    CONFIG,
    SUMMARY,
    atomic_write_bytes,
    read_metrics,
)
from flowerbed.platform.summary import attacker_relative_weight

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
    "clean_acc_min",
    "best_clean_acc",
    "asr_final_mean",
    "asr_max_mean",
    "asr_plus_10_mean",
    "asr_plus_30_mean",
    "detection_precision",
    "detection_recall",
    "detection_fpr",
    "attacker_relative_weight",
    "update_norm_benign",
    "update_norm_attacker",
    "seconds",
    "wall_seconds",
    "run_dir",
    "error",
)
BACKDOOR_FIELDS = ("final_asr", "max_asr", "asr_plus_10", "asr_plus_30", "last_attack_round", "local_asr_mean")


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
    metrics = read_metrics(run_dir)
    # The worst round: a rule that lets one client steer the model (Krum, FLTrust) can end on a
    # good round after rounds near chance, which the final accuracy alone would hide.
    clean = [record["clean_acc"] for record in metrics if isinstance(record.get("clean_acc"), (int, float))]
    row["clean_acc_min"] = min(clean) if clean else ""
    # From metrics.jsonl, so cells finished before summaries carried it have it too.
    relative_weight = attacker_relative_weight(metrics)
    row["attacker_relative_weight"] = "" if relative_weight is None else relative_weight
    norms = summary.get("update_norms", {})  # medians over the run (absent in runs made before they were recorded)
    row["update_norm_benign"] = norms.get("benign_median", "")
    row["update_norm_attacker"] = norms.get("attacker_median", "")
    backdoors = summary.get("backdoors", {})
    row["backdoors"] = {name: {f: scores.get(f, "") for f in BACKDOOR_FIELDS} for name, scores in backdoors.items()}
    for column, fieldname in (
        ("asr_final_mean", "final_asr"),
        ("asr_max_mean", "max_asr"),
        ("asr_plus_10_mean", "asr_plus_10"),
        ("asr_plus_30_mean", "asr_plus_30"),
    ):
        # A piece of a combined backdoor (a DBA attacker's local trigger) is not a backdoor of its own.
        whole = [scores for scores in backdoors.values() if not scores.get("part_of")]
        values = [scores[fieldname] for scores in whole if isinstance(scores.get(fieldname), (int, float))]
        # The mean over backdoors only when every backdoor has the value (no mean of a subset).
        row[column] = float(sum(values) / len(values)) if values and len(values) == len(whole) else ""
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
    "`(n/N)`: only n of the N finished seeds have it). *Clean acc* is the final round's test accuracy, "
    "*min clean acc* the lowest of any round (a model that swung to near chance and back ends well). ASR is the final-round attack success rate, "
    "averaged over an attack's backdoors in the overview (DBA's: its global trigger; the attackers' pieces are in "
    "the backdoor table); *max ASR* is the highest ASR of any round (a "
    "backdoor that worked during the attack and faded later has a high max ASR); *ASR +10*/*+30* is the ASR 10/30 rounds after a "
    "backdoor's last attack round (— when the run ends sooner). Detection scores are pooled over all "
    "rounds of a run; precision is — when the defence flagged nobody, and all three are — for a "
    "rule that cannot leave a client out. *Attacker weight* is, for rules that weight clients, the "
    "mean weight of an attacker's update relative to the round's average client (1 = treated like "
    "the others, 0 = excluded). *Local ASR* (backdoor table) is the ASR of the attackers' own trained models "
    "on their own images, averaged over their attack rounds: low, the attack never learned its trigger; high "
    "with a low global ASR, the aggregation removed it (— for a backdoor no attacker trains whole, or a "
    "cell run before it was recorded)."
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
        "| attack | defence | seeds done | clean acc | min clean acc | max ASR | final ASR | ASR +10 | ASR +30 | det. precision | det. recall | det. FPR | attacker weight |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
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
            format_stat([r["clean_acc_min"] for r in done], n),
            format_stat([r["asr_max_mean"] for r in done], n) if has_backdoors else "—",
            format_stat([r["asr_final_mean"] for r in done], n) if has_backdoors else "—",
            format_stat([r["asr_plus_10_mean"] for r in done], n) if has_backdoors else "—",
            format_stat([r["asr_plus_30_mean"] for r in done], n) if has_backdoors else "—",
            format_stat([r["detection_precision"] for r in done], n),
            format_stat([r["detection_recall"] for r in done], n),
            format_stat([r["detection_fpr"] for r in done], n),
            format_stat([r["attacker_relative_weight"] for r in done], n),
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
                        format_stat([e.get("local_asr_mean") for e in entries], len(done)),
                    ]
                )
                + " |"
            )
    if backdoor_lines:
        lines += [
            "",
            "## Backdoors",
            "",
            "| attack | defence | backdoor | last attack round | final ASR | max ASR | ASR +10 | ASR +30 | local ASR |",
            "|---|---|---|---|---|---|---|---|---|",
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
