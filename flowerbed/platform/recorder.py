"""The run recorder: every run writes one folder (see the run-folder contract in README).

Every file is written atomically (temporary file + ``os.replace``), so a run
killed at any moment leaves only complete files: ``metrics.jsonl`` holds every
finished round and ``checkpoint.pt`` the last checkpointed global model, from
which ``resume=<run folder>`` continues.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowerbed.platform.errors import RunFolderError

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.json"
ENVIRONMENT = "environment.json"
ATTACKERS = "attackers.json"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(path: Path, payload: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


@dataclass
class MetricsFile:
    """What ``metrics.jsonl`` holds: every complete round record, and the lines that are not one
    (line number, why), e.g. the torn last line a killed writer of another tool can leave."""

    rounds: list[dict[str, Any]]
    skipped: list[tuple[int, str]]


def read_metrics_file(run_dir: Path) -> MetricsFile:
    """Read ``metrics.jsonl`` line by line, keeping every complete round record."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return MetricsFile([], [])
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as error:
        raise RunFolderError(f"{path} cannot be read: {error.strerror or error}") from None
    rounds, skipped = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped.append((number, "not a complete JSON line"))
            continue
        if not isinstance(record, dict) or type(record.get("round")) is not int:
            skipped.append((number, "not a round record (no integer 'round')"))
            continue
        rounds.append(record)
    return MetricsFile(rounds, skipped)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete round record of ``metrics.jsonl`` (lines that are not one are left out)."""
    return read_metrics_file(run_dir).rounds


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON file holding an object, or None where it is missing or damaged."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def new_run_dir(output_dir: str | Path, experiment: str) -> Path:
    """``<output-dir>/<experiment>-<timestamp>`` as an absolute path (made unique if taken)."""
    parent = Path(output_dir).expanduser().resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = parent / f"{experiment}-{stamp}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = parent / f"{experiment}-{stamp}-{suffix}"
    candidate.mkdir(parents=True)
    return candidate


class Recorder:
    """Writes config, ground truth, per-round metrics, checkpoints and the final summary."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rounds: list[dict[str, Any]] = read_metrics(self.run_dir)

    # ----------------------------------------------------------------- start
    def write_config(self, config_json: dict[str, Any]) -> None:
        atomic_write_json(self.run_dir / CONFIG, config_json)

    def write_environment(self, environment: dict[str, Any]) -> None:
        """Record what produced the run. A resumed run keeps the first record and appends its own to ``resumed``
        (with the last round recorded before it), so rounds made by different code can be told apart."""
        path = self.run_dir / ENVIRONMENT
        if self.rounds and path.exists():
            try:
                first = json.loads(path.read_text())
            except json.JSONDecodeError:
                first = None
            if isinstance(first, dict):
                first.setdefault("resumed", []).append({"after-round": self.rounds[-1]["round"], **environment})
                environment = first
        atomic_write_json(path, environment)

    def write_attackers(self, description: dict[str, Any]) -> None:
        atomic_write_json(self.run_dir / ATTACKERS, description)

    # ----------------------------------------------------------------- rounds
    def log_round(self, record: dict[str, Any]) -> None:
        """Append one round's metrics (the whole file is rewritten atomically)."""
        self.rounds = [r for r in self.rounds if r["round"] < record["round"]] + [_clean(record)]
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rounds)
        atomic_write_bytes(self.run_dir / METRICS, lines.encode())

    def save_checkpoint(
        self, server_round: int, state_dict: dict[str, torch.Tensor], strategy_state: dict[str, torch.Tensor] | None = None
    ) -> None:
        """The global model after ``server_round``, and what the defence carries to the next round."""
        payload = {"round": server_round, "model": state_dict, "strategy": dict(strategy_state or {})}
        atomic_torch_save(self.run_dir / CHECKPOINT, payload)

    def load_checkpoint(self) -> tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """(round, model state, strategy state) of the last checkpoint, or None."""
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return None
        payload = torch.load(path, weights_only=True)
        # Metrics of rounds after the checkpoint are dropped: they will be re-run.
        self.rounds = [r for r in self.rounds if r["round"] <= payload["round"]]
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rounds)
        atomic_write_bytes(self.run_dir / METRICS, lines.encode())
        return payload["round"], payload["model"], payload.get("strategy", {})

    # ----------------------------------------------------------------- end
    def finish(self, state_dict: dict[str, torch.Tensor], summary: dict[str, Any]) -> None:
        atomic_torch_save(self.run_dir / MODEL, state_dict)
        atomic_write_json(self.run_dir / SUMMARY, summary)


def _clean(value: Any) -> Any:
    """JSON-safe: floats rounded to 6 significant digits, NaN/Inf as strings, no None values."""
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items() if item is not None}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return float(f"{value:.6g}")
    if hasattr(value, "item"):
        return _clean(value.item())
    return value
