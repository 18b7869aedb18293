"""Shared pre-training for ``flowerbed bench`` grids (grid key ``pretrain-rounds``).

Backdoor attacks are usually studied on a global model that has already learned
the task (DBA, Xie et al., ICLR 2020; Neurotoxin, Zhang et al., ICML 2022). With
``pretrain-rounds = N`` the bench first trains, once per seed, the grid's ``base``
federation for N rounds with FedAvg and no attacker, and every cell of that seed
starts from the result (run key ``model.init``); cell round numbers, attack
windows included, count from the end of pre-training. Pre-training lives in
``<out>/pretraining/seed<k>/`` (a run folder, resumed if interrupted) and its
final weights in ``<out>/pretraining/seed<k>.pt``; a finished file is reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowerbed.bench.cells import inspect_cell, stale_keys
from flowerbed.platform.config import ConfigError, RunConfig, parse_run_config
from flowerbed.platform.recorder import CONFIG, MODEL, atomic_write_bytes

PRETRAINING = "pretraining"
# Run keys the pre-training sets itself, whatever ``base`` says.
PRETRAINING_KEYS = {"attack.num-attackers": 0, "strategy.name": "fedavg"}


def pretrained_weights(out: Path, seed: int) -> Path:
    """Where seed ``seed``'s pre-trained weights are (or will be)."""
    return Path(out) / PRETRAINING / f"seed{seed}.pt"


def pretraining_folder(out: Path, seed: int) -> Path:
    return Path(out) / PRETRAINING / f"seed{seed}"


def pretraining_error_log(out: Path, seed: int) -> Path:
    """Where the traceback of a failed pre-training goes (removed once it succeeds)."""
    return Path(out) / PRETRAINING / f"seed{seed}-error.txt"


def pretraining_config(base: dict[str, Any], rounds: int, seed: int, out: Path) -> RunConfig:
    """The clean FedAvg run on the grid's base config that pre-trains seed ``seed``."""
    flat = {
        **base,
        **PRETRAINING_KEYS,
        "num-server-rounds": rounds,
        "seed": seed,
        "output-dir": str(pretraining_folder(out, seed)),
        "experiment": f"{PRETRAINING}__seed{seed}",
    }
    try:
        return parse_run_config(flat)
    except ConfigError as error:
        raise ConfigError([f"pre-training (seed {seed}): {problem}" for problem in error.problems]) from None


def check_existing(config: RunConfig, seed: int, out: Path) -> None:
    """An existing pre-training made with another config is an error, never silently reused."""
    state = inspect_cell(pretraining_folder(out, seed))
    existing = state.done or state.partial
    if existing is None:
        return
    changed = stale_keys(json.loads((existing / CONFIG).read_text()), config.resolved_json_dict())
    if changed:
        raise ConfigError(
            [
                f"pre-training seed {seed}: the existing run {existing} was made with a different config "
                f"(keys {', '.join(changed)}); delete {pretraining_folder(out, seed)} and {pretrained_weights(out, seed)} "
                "to redo it, or give another --out"
            ]
        )


def ensure_pretrained(config: RunConfig, seed: int, out: Path, runner, quiet: bool = True) -> tuple[Path, bool]:
    """Pre-train seed ``seed`` unless its weights exist; return (weights file, whether it ran now)."""
    weights = pretrained_weights(out, seed)
    if weights.is_file():
        return weights, False
    state = inspect_cell(pretraining_folder(out, seed))
    if state.done is None:
        if state.partial is not None:
            config = parse_run_config({**config.to_flat(), "resume": str(state.partial)})
        runner(config, quiet)
        state = inspect_cell(pretraining_folder(out, seed))
        if state.done is None:
            raise RuntimeError(f"pre-training seed {seed} ended without writing summary.json in {pretraining_folder(out, seed)}")
    atomic_write_bytes(weights, (state.done / MODEL).read_bytes())
    pretraining_error_log(out, seed).unlink(missing_ok=True)
    return weights, True
