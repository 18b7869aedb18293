"""The Flower ServerApp: validate the config, set up the run folder, drive the rounds.

``app`` reads ``context.run_config`` (the ``flwr run`` path); the in-process
simulation builds its own app with :func:`make_server_app` and hands it an
already validated config, because ``run_simulation`` passes no run config.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flowerbed.platform.allocator import keep_freed_memory
from flowerbed.platform.config import ConfigError, RunConfig, config_differences, flatten, parse_run_config
from flowerbed.platform.federation import run_rounds
from flowerbed.platform.progress import Progress
from flowerbed.platform.provenance import environment
from flowerbed.platform.recorder import CONFIG, Recorder, new_run_dir
from flowerbed.platform.roles import attack_end_rounds
from flowerbed.platform.run_parts import RunParts, build_run


@dataclass
class RunOutcome:
    """Filled in by the ServerApp so an in-process caller learns where the run went."""

    run_dir: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None


def open_run_folder(config: RunConfig) -> Path:
    """A new run folder, or the one being resumed (whose config must match)."""
    if not config.resume:
        return new_run_dir(config.output_dir, config.experiment)
    return check_resume(config)


def check_resume(config: RunConfig) -> Path:
    """The run folder ``resume`` names, after checking that its saved config matches this one."""
    run_dir = Path(config.resume).expanduser().resolve()
    saved_path = run_dir / CONFIG
    if not saved_path.exists():
        raise ConfigError([f"key 'resume': {run_dir} is not a run folder (no {CONFIG})"])
    saved = json.loads(saved_path.read_text())
    changed = config_differences(
        saved, config.resolved_json_dict(), ignore=("resume", "output-dir", "num-server-rounds")
    )
    if changed:
        raise ConfigError([f"key 'resume': the config differs from the saved run in {', '.join(changed)}"])
    saved_config = parse_run_config(flatten(saved))
    if attack_end_rounds(saved_config) != attack_end_rounds(config):
        problem = (
            f"key 'attack.end-round': 0 means the last round, so resuming with num-server-rounds "
            f"{config.num_server_rounds} instead of {saved_config.num_server_rounds} would move the attack's "
            f"end from round(s) {attack_end_rounds(saved_config)} to {attack_end_rounds(config)}; "
            f"start a new run, or keep num-server-rounds"
        )
        raise ConfigError([problem])
    return run_dir


def execute(grid: Grid, config: RunConfig, outcome: RunOutcome, quiet: bool = False, run: RunParts | None = None) -> None:
    """Run one experiment on ``grid`` and record it (``run``: its parts, if already built from ``config``)."""
    progress = Progress(quiet=quiet)
    run = run if run is not None else build_run(config)
    run_dir = open_run_folder(config)
    outcome.run_dir = run_dir
    recorder = Recorder(run_dir)
    recorder.write_config(config.resolved_json_dict())
    recorder.write_environment(environment())
    if run.plan.attackers:
        recorder.write_attackers(run.plan.describe())
    progress.note(f"run folder: {run_dir}")
    outcome.summary = run_rounds(grid, run, recorder, progress)
    from flowerbed.platform.report import make_plots

    make_plots(run_dir)
    progress.note(f"done: results in {run_dir}")


def make_server_app(
    preset: RunConfig | None = None, outcome: RunOutcome | None = None, quiet: bool = False, run: RunParts | None = None
) -> ServerApp:
    """A ServerApp that runs ``preset`` (or, when None, the ``flwr run`` run config); ``run``: the
    preset's parts, already built (and so checked) before the simulation engine started."""
    server_app = ServerApp()
    result = outcome if outcome is not None else RunOutcome()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.set_num_threads(max(torch.get_num_threads(), 1))
        keep_freed_memory()  # the server's evaluation reuses its buffers (allocator.py)
        try:
            config = preset if preset is not None else parse_run_config(dict(context.run_config))
            execute(grid, config, result, quiet=quiet, run=run)
        except ConfigError as error:
            result.error = error
            print(f"[flowerbed] {error}", file=sys.stderr, flush=True)
            raise
        except BaseException as error:  # recorded for the in-process caller, then re-raised for Flower
            result.error = error
            raise

    return server_app


app = make_server_app()
