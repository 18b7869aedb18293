"""``flowerbed bench``: run a grid of experiments (attacks × defences × seeds) and tabulate it.

    flowerbed bench experiments/bench-dmba.toml                 # run (or resume) the whole grid
    flowerbed bench experiments/bench-dmba.toml --dry-run       # list the cells and their state
    flowerbed bench experiments/bench-dmba.toml --only attack=dmba,badnets,defence=krum
    flowerbed bench experiments/bench-dmba.toml --rerun defence=flame --only defence=flame   # redo finished cells
    flowerbed bench experiments/bench-dmba.toml --stop-after 2h # start no cell after 2 hours; rerun to continue
    flowerbed bench --report bench-results/bench-dmba           # re-make tables and plots only

The grid file (TOML)::

    name = "bench-dmba"            # optional; default: the file's stem
    seeds = [0, 1]                 # one cell per seed (sets the run key `seed`)
    pretrain-rounds = 20           # optional: every cell starts from a clean FedAvg pre-training of
                                   # [base] (once per seed, <out>/pretraining/; see flowerbed/bench/pretraining.py)
    defences = ["fedavg", "krum"]  # or tables: [defences.<label>] with run keys
    [base]                         # run keys shared by every cell (flat or nested)
    num-server-rounds = 40
    [attacks.none]                 # run keys per attack; label "none" means no attackers
    [attacks.dmba]
    attack.name = "dmba"
    attack.num-attackers = 3

A defence given by name is ``{"strategy.name": name}``; a ``[defences.<label>]``
table without ``strategy.name`` uses the label as the strategy name. An attack
table without ``attack.name`` uses its label when the label is a registered
attack, and the label ``none`` defaults to ``attack.num-attackers = 0``.
Later layers win: base < attack < defence < seed.

A *cell* is (attack label, defence label, seed). Its run folder lives under
``<out>/cells/<attack>__<defence>__seed<k>/`` (the cell sets the run keys
``output-dir`` and ``experiment``; the run folder adds a timestamp). A cell is
done when a run folder there holds ``summary.json``; a run folder with a
checkpoint but no summary is resumed (``resume`` key); a cell whose last attempt
raised is recorded as failed (``cell.json``, ``error.txt``) and retried on the
next invocation. Existing runs made with a different config are an error
(never silently mixed into the tables). Every cell's config is validated before
anything runs. ``--rerun FILTER`` (the ``--only`` syntax) sets the matching cells'
folders aside under ``<out>/superseded/<time>/`` first, so they run again — after a
code change the config comparison cannot see, or to replace a run with a different
config; the run itself covers the ``--only`` selection (all cells without it).

Outputs in ``<out>`` are made from the run folders' files only (summary.json,
metrics.jsonl), never from memory: ``results.csv`` (one row per cell),
``results.md`` (mean ± sample std over seeds), ``heatmap_asr.png`` (defence ×
attack, mean final ASR), ``heatmap_clean_acc.png`` and
``plots/asr_rounds_<defence>.png`` (ASR and clean accuracy over rounds, one line
per attack, mean over seeds with a min–max band). In results.csv, ``seconds`` is
the run's summed round time (summary.json) and ``wall_seconds`` the bench's
clock for the cell's last attempt (Ray start-up included); per-backdoor columns
are ``<backdoor>.<final_asr|max_asr|asr_plus_10|asr_plus_30|last_attack_round>``
and stay empty where a cell has no such backdoor. The two tables are re-made after
every cell (a killed grid leaves them current), the figures when the call ends.

This module holds the command. The grid file is read in ``grid.py``, checked cell by
cell in ``plan.py`` and run in ``run.py`` (pre-training in ``pretraining.py``); the output
folder's layout and cell states are in ``cells.py``; ``report.py`` writes the tables
(``tables.py``) and the figures (``figures.py``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from flowerbed.bench.grid import Grid, read_grid
from flowerbed.bench.plan import plan_grid
from flowerbed.bench.report import write_report
from flowerbed.bench.run import run_grid
from flowerbed.platform.config import ConfigError


def default_out(grid: Grid) -> Path:
    return Path("bench-results") / grid.name


def _command_bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if args.report:
        if args.grid:
            raise ConfigError(["--report OUT re-makes the report of OUT; give no grid file with it"])
        for path in write_report(args.report):
            console.print(f"wrote {path}")
        return 0
    if not args.grid:
        raise ConfigError(["give a grid file (flowerbed bench GRID.toml) or --report OUT"])
    grid = read_grid(args.grid)
    out = Path(args.out) if args.out else default_out(grid)
    if args.dry_run:
        if args.rerun:
            raise ConfigError(["--rerun moves finished cells aside; it does nothing with --dry-run"])
        planned, selected = plan_grid(grid, out, args.only)
        table = Table(title=f"bench {grid.name}: {len(selected)} of {len(planned)} cells (output {out})")
        table.add_column("cell", no_wrap=True)
        for column in ("status", "attack", "rounds"):
            table.add_column(column)
        for p in selected:
            config = p.config
            attack = ",".join(config.attack.name) if config.attack.num_attackers else "none"
            table.add_row(
                p.cell.name,
                "resume" if p.state.partial else p.state.status,
                f"{attack} ×{config.attack.num_attackers}",
                str(config.num_server_rounds),
            )
        console.print(table)
        return 0
    counts = run_grid(
        grid, out, only=args.only, verbose=args.verbose, console=console, rerun=args.rerun, stop_after=args.stop_after
    )
    return 1 if counts["failed"] else 0


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``"90m"``, ``"1.5h"``, ``"600s"`` -> seconds. A unit is required (is "90" minutes or seconds?)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh])\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give a number and a unit s, m or h (e.g. 90m, 2h)")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def _help_text() -> str:
    """The module docstring from the usage lines down to the end of the grid format."""
    text = (__doc__ or "").replace("``", "`")
    return text[text.index("    flowerbed bench") : text.index("A *cell* is")].rstrip()


def add_bench_command(commands) -> None:
    """Add ``flowerbed bench`` to the CLI's subparsers."""
    bench = commands.add_parser(
        "bench",
        help="run a grid of experiments (attacks × defences × seeds), resumably, and tabulate it",
        description=_help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("grid", nargs="?", help="grid TOML file (see experiments/bench-*.toml)")
    bench.add_argument("--out", help="output folder (default: bench-results/<grid name>)")
    bench.add_argument("--only", metavar="FILTER", help="run only some cells: attack=a,b,defence=c,seed=0")
    bench.add_argument(
        "--rerun",
        metavar="FILTER",
        help="set the matching cells' folders aside (<out>/superseded/<time>/) so they run again; same syntax as --only",
    )
    bench.add_argument(
        "--stop-after",
        metavar="DURATION",
        type=parse_duration,
        help="start no new cell after this long (e.g. 90m, 2h); the running cell finishes; rerun to continue",
    )
    bench.add_argument("--dry-run", action="store_true", help="validate the grid and list its cells; run nothing")
    bench.add_argument("--report", metavar="OUT", help="re-make results.csv/.md and the figures of OUT; run nothing")
    bench.add_argument("--verbose", action="store_true", help="print every round of every cell")
    bench.set_defaults(handler=_command_bench)
