"""``flowerbed bench``: a tiny grid run end to end, resumption, the report, and grid validation.

One module fixture runs 4 real simulations (attacks none/badnets × defences
fedavg/median × 1 seed, 2 rounds, 3 clients); the other tests reuse or copy its
output folder and use a stand-in runner where no training is needed.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from flowerbed.bench.command import parse_duration
from flowerbed.bench.figures import collapsed_cells
from flowerbed.bench.grid import parse_grid, read_grid, select_cells
from flowerbed.bench.run import run_grid, simulate
from flowerbed.bench.tables import BACKDOOR_FIELDS, BASE_COLUMNS, format_stat
from flowerbed.cli import main
from flowerbed.platform.config import ConfigError

GRID_TOML = """
name = "unit"
seeds = [0]
defences = ["fedavg", "median"]

[base]
num-server-rounds = 2
num-clients = 3
fraction-train = 1.0
local-epochs = 1
batch-size = 32
"data.train-size" = 300
"data.test-size" = 60
"data.cache-dir" = "{cache_dir}"
"partition.name" = "iid"

[attacks.none]

[attacks.badnets]
attack.name = "badnets"
attack.num-attackers = 1
attack.targets = 0
attack.poison-fraction = 0.5
"""

CELLS = ["none__fedavg__seed0", "none__median__seed0", "badnets__fedavg__seed0", "badnets__median__seed0"]


def write_grid(folder: Path, cache_dir: str, text: str = GRID_TOML, extra: str = "") -> Path:
    path = folder / "unit.toml"
    path.write_text(text.format(cache_dir=cache_dir) + extra)
    return path


class CountingRunner:
    """The real simulation, counting the cells it is asked to run."""

    def __init__(self) -> None:
        self.cells: list[str] = []

    def __call__(self, config, quiet):
        self.cells.append(config.experiment)
        return simulate(config, quiet)


def refuse(config, quiet):
    raise AssertionError(f"nothing should run, but {config.experiment} was started")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir):
    """The tiny grid, run once: (grid file, output folder, runner)."""
    folder = tmp_path_factory.mktemp("bench")
    grid_path = write_grid(folder, cache_dir)
    runner = CountingRunner()
    counts = run_grid(read_grid(grid_path), folder / "out", runner=runner)
    assert counts == {"skipped": 0, "done": 4, "failed": 0, "left": 0}
    return grid_path, folder / "out", runner


def finished_grid_with_two_new_cells(finished, tmp_path: Path, cache_dir: str):
    """A copy of the finished grid's folder, and the grid with a defence more ("median-b"):
    its two cells are new, the four others already done."""
    _, out, _ = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    grid = read_grid(write_grid(tmp_path, cache_dir))
    grid.defences["median-b"] = {"strategy.name": "median"}
    return grid, copy


def summary_of(out: Path, cell: str) -> dict:
    (run_dir,) = [p for p in (out / "cells" / cell).iterdir() if (p / "summary.json").is_file()]
    return json.loads((run_dir / "summary.json").read_text())


def clean_accuracies_of(out: Path, cell: str) -> list[float]:
    (run_dir,) = [p for p in (out / "cells" / cell).iterdir() if (p / "summary.json").is_file()]
    return [json.loads(line)["clean_acc"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_cell_ran_once_in_its_own_folder(finished):
    _, out, runner = finished
    assert sorted(runner.cells) == sorted(CELLS)
    for cell in CELLS:
        (run_dir,) = [p for p in (out / "cells" / cell).iterdir() if p.is_dir()]
        assert run_dir.name.startswith(f"{cell}-")
        config = json.loads((run_dir / "config.json").read_text())
        assert config["seed"] == 0 and config["num-server-rounds"] == 2
        assert config["strategy"]["name"] == cell.split("__")[1]
        assert config["attack"]["num-attackers"] == (1 if cell.startswith("badnets") else 0)


def test_results_csv_has_one_row_per_cell_with_values_from_the_run_folders(finished):
    _, out, _ = finished
    rows = read_csv(out / "results.csv")
    assert [row["cell"] for row in rows] == CELLS  # grid order: attack, defence, seed
    assert set(BASE_COLUMNS) <= set(rows[0])
    assert {f"badnets-0.{f}" for f in BACKDOOR_FIELDS} <= set(rows[0])
    for row in rows:
        summary = summary_of(out, row["cell"])
        assert row["status"] == "done"
        assert row["rounds_completed"] == "2" and row["rounds_planned"] == "2"
        assert float(row["clean_acc"]) == summary["final"]["clean_acc"]
        assert float(row["clean_acc_min"]) == min(clean_accuracies_of(out, row["cell"]))
        if row["attack"] == "badnets":
            assert float(row["badnets-0.final_asr"]) == summary["backdoors"]["badnets-0"]["final_asr"]
            assert float(row["asr_final_mean"]) == summary["backdoors"]["badnets-0"]["final_asr"]
            assert row["asr_plus_30_mean"] == ""  # a 2-round run has no round +30
            local = summary["backdoors"]["badnets-0"]["local_asr_mean"]
            assert float(row["badnets-0.local_asr_mean"]) == local and 0.0 <= local <= 1.0
        else:
            assert row["badnets-0.final_asr"] == "" and row["asr_final_mean"] == ""
        for key in ("precision", "recall", "fpr"):
            expected = summary.get("detection", {}).get(key)
            assert (row[f"detection_{key}"] == "") if expected is None else (float(row[f"detection_{key}"]) == expected)
        assert row["attacker_relative_weight"] == ""  # FedAvg and the median weight nobody
        assert float(row["update_norm_benign"]) == summary["update_norms"]["benign_median"]
        attacker_norm = summary["update_norms"].get("attacker_median")
        assert (row["update_norm_attacker"] == "") if attacker_norm is None else float(row["update_norm_attacker"]) == attacker_norm
        assert (attacker_norm is not None) == (row["attack"] == "badnets")


def test_results_md_and_figures(finished):
    _, out, _ = finished
    text = (out / "results.md").read_text()
    assert "# Bench: unit" in text and "4 done" in text
    summary = summary_of(out, "badnets__median__seed0")
    header = next(line for line in text.splitlines() if line.startswith("| attack | defence | seeds done |"))
    overview = next(line for line in text.splitlines() if line.startswith("| badnets | median |"))
    columns = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in overview.split("|")]))
    assert columns["clean acc"] == f"{summary['final']['clean_acc']:.3f}"
    assert columns["min clean acc"] == f"{min(clean_accuracies_of(out, 'badnets__median__seed0')):.3f}"
    assert columns["final ASR"] == f"{summary['backdoors']['badnets-0']['final_asr']:.3f}"
    assert columns["max ASR"] == f"{summary['backdoors']['badnets-0']['max_asr']:.3f}"
    backdoor_header = next(line for line in text.splitlines() if line.startswith("| attack | defence | backdoor |"))
    backdoor_row = next(line for line in text.splitlines() if line.startswith("| badnets | median | badnets-0 |"))
    backdoor_columns = dict(zip([c.strip() for c in backdoor_header.split("|")], [c.strip() for c in backdoor_row.split("|")]))
    assert backdoor_columns["local ASR"] == f"{summary['backdoors']['badnets-0']['local_asr_mean']:.3f}"
    assert "## Cells without results" not in text
    for figure in ("heatmap_asr.png", "heatmap_clean_acc.png", "plots/asr_rounds_fedavg.png", "plots/asr_rounds_median.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
        assert f"]({figure})" in text


def test_rerun_skips_every_finished_cell_and_changes_no_cell_folder(finished):
    grid_path, out, _ = finished
    before = snapshot(out / "cells")
    counts = run_grid(read_grid(grid_path), out, runner=refuse)
    assert counts == {"skipped": 4, "done": 0, "failed": 0, "left": 0}
    assert snapshot(out / "cells") == before


def test_report_is_remade_from_the_files_alone(finished, tmp_path):
    _, out, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("results.csv", "results.md", "heatmap_asr.png"):
        (copy / name).unlink()
    assert main(["bench", "--report", str(copy)]) == 0
    assert (copy / "heatmap_asr.png").is_file()
    strip = lambda rows: [{k: v for k, v in row.items() if k != "run_dir"} for row in rows]
    assert strip(read_csv(copy / "results.csv")) == strip(read_csv(out / "results.csv"))
    assert (copy / "results.md").read_text() == (out / "results.md").read_text()


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(finished, tmp_path, cache_dir):
    grid, copy = finished_grid_with_two_new_cells(finished, tmp_path, cache_dir)
    attempted = []

    def broken(config, quiet):
        attempted.append(config.experiment)
        raise RuntimeError(f"disk full in {config.experiment}")

    counts = run_grid(grid, copy, runner=broken)
    assert counts == {"skipped": 4, "done": 0, "failed": 2, "left": 0}
    assert attempted == ["none__median-b__seed0", "badnets__median-b__seed0"]
    rows = {row["cell"]: row for row in read_csv(copy / "results.csv")}
    assert len(rows) == 6
    assert rows["badnets__median-b__seed0"]["status"] == "failed"
    assert rows["badnets__median-b__seed0"]["error"] == "RuntimeError: disk full in badnets__median-b__seed0"
    assert rows["badnets__median__seed0"]["status"] == "done"
    assert "RuntimeError" in (copy / "cells" / "none__median-b__seed0" / "error.txt").read_text()
    text = (copy / "results.md").read_text()
    assert "## Cells without results" in text and "| badnets__median-b__seed0 | failed |" in text
    assert "| badnets | median-b | 0/1 |" in text


def test_stop_after_starts_no_cell_once_the_time_is_up_and_a_later_call_continues(finished, tmp_path, cache_dir):
    grid, copy = finished_grid_with_two_new_cells(finished, tmp_path, cache_dir)
    now = [0.0]
    attempted = []

    def slow_and_broken(config, quiet):  # each cell "takes" 100 s on the stand-in clock
        attempted.append(config.experiment)
        now[0] += 100.0
        raise RuntimeError("stand-in")

    counts = run_grid(grid, copy, runner=slow_and_broken, stop_after=60.0, clock=lambda: now[0])
    assert counts == {"skipped": 4, "done": 0, "failed": 1, "left": 1}
    assert attempted == ["none__median-b__seed0"]  # started before the limit, finished after it
    rows = {row["cell"]: row for row in read_csv(copy / "results.csv")}
    assert rows["badnets__median-b__seed0"]["status"] == "pending"  # the report is written
    counts = run_grid(grid, copy, runner=slow_and_broken, clock=lambda: now[0])
    assert counts == {"skipped": 4, "done": 0, "failed": 2, "left": 0}


def test_the_tables_are_current_after_every_cell_and_the_figures_wait_for_the_end(finished, tmp_path, cache_dir):
    grid, copy = finished_grid_with_two_new_cells(finished, tmp_path, cache_dir)
    figures_before = snapshot(copy / "plots")
    seen = []

    def second_cell_reads_the_tables(config, quiet):
        if config.experiment == "badnets__median-b__seed0":  # as if the grid were killed now
            seen.append({row["cell"]: row["status"] for row in read_csv(copy / "results.csv")})
            seen.append((copy / "results.md").read_text())
            seen.append(snapshot(copy / "plots"))
        raise RuntimeError("stand-in")

    run_grid(grid, copy, runner=second_cell_reads_the_tables)
    statuses, markdown, figures_meanwhile = seen
    assert statuses["none__median-b__seed0"] == "failed"  # the first new cell is already in the table
    assert statuses["badnets__median-b__seed0"] == "pending"
    assert statuses["badnets__median__seed0"] == "done"
    assert "| none__median-b__seed0 | failed |" in markdown
    assert "![heatmap_asr](heatmap_asr.png)" in markdown  # the figures on disk stay linked
    assert figures_meanwhile == figures_before  # and are not redrawn between cells


@pytest.mark.parametrize(("text", "seconds"), [("90m", 5400.0), ("1.5h", 5400.0), ("600s", 600.0), (" 2h ", 7200.0)])
def test_stop_after_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_a_stop_after_without_a_unit_is_refused_by_name(tmp_path, cache_dir, capsys):
    grid_path = write_grid(tmp_path, cache_dir)
    with pytest.raises(SystemExit):
        main(["bench", str(grid_path), "--out", str(tmp_path / "out"), "--stop-after", "90"])
    assert "'90' is not a duration" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unfinished_cell_is_resumed_from_its_run_folder(finished, tmp_path):
    grid_path, out, _ = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (run_dir,) = [p for p in (copy / "cells" / "badnets__median__seed0").iterdir() if p.is_dir()]
    (run_dir / "summary.json").unlink()  # as if killed after the last checkpoint
    resumed = []

    def capture(config, quiet):
        resumed.append((config.experiment, config.resume))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grid(read_grid(grid_path), copy, runner=capture)
    assert resumed == [("badnets__median__seed0", str(run_dir))]
    rows = {row["cell"]: row for row in read_csv(copy / "results.csv")}  # the report is written on interrupt
    assert rows["badnets__median__seed0"]["status"] == "interrupted"
    assert rows["badnets__fedavg__seed0"]["status"] == "done"


def test_existing_results_made_with_another_config_are_an_error(finished, tmp_path, cache_dir):
    _, out, _ = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    grid_path = write_grid(tmp_path, cache_dir, GRID_TOML.replace("num-clients = 3", "num-clients = 3\nlr = 0.05"))
    with pytest.raises(ConfigError, match=r"different config \(keys lr\)"):
        run_grid(read_grid(grid_path), copy, runner=refuse)


def test_a_cell_run_under_another_default_of_its_plugins_is_an_error(finished, tmp_path):
    # config.json writes out the parameters of the plugins a run uses; a cell made when the
    # patch trigger's default size was 4 is stale once the default is 3, though the grid sets neither.
    grid_path, out, _ = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (run_dir,) = [p for p in (copy / "cells" / "badnets__median__seed0").iterdir() if (p / "config.json").is_file()]
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["trigger"]["patch"]["size"] == 3  # the default, written out
    saved["trigger"]["patch"]["size"] = 4
    (run_dir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"badnets__median__seed0.*different config \(keys trigger.patch.size\)"):
        run_grid(read_grid(grid_path), copy, runner=refuse)


def test_rerun_sets_the_matching_cells_aside_and_runs_them_again(finished, tmp_path, cache_dir):
    grid_path, out, _ = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    old_run = next(p for p in (copy / "cells" / "badnets__median__seed0").iterdir() if p.is_dir())
    untouched = snapshot(copy / "cells" / "none__fedavg__seed0")
    attempted = []

    def record(config, quiet):
        attempted.append((config.experiment, config.lr))
        raise RuntimeError("stop here")

    with pytest.raises(ConfigError, match="--rerun defence=krum: not in the grid"):
        run_grid(read_grid(grid_path), copy, runner=refuse, rerun="defence=krum")  # a bad filter moves nothing
    counts = run_grid(read_grid(grid_path), copy, runner=record, rerun="defence=median", only="defence=median")
    assert counts == {"skipped": 0, "done": 0, "failed": 2, "left": 0}
    assert [name for name, _ in attempted] == ["none__median__seed0", "badnets__median__seed0"]
    (aside,) = (copy / "superseded").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["badnets__median__seed0", "none__median__seed0"]
    assert (aside / "badnets__median__seed0" / old_run.name / "summary.json").is_file()  # kept, readable
    assert snapshot(copy / "cells" / "none__fedavg__seed0") == untouched  # outside the filter

    # A changed config makes every existing run an error; --rerun over them sets them aside instead.
    changed = read_grid(write_grid(tmp_path, cache_dir, GRID_TOML.replace("num-clients = 3", "num-clients = 3\nlr = 0.05")))
    with pytest.raises(ConfigError, match="--rerun attack=none,defence=fedavg,seed=0"):
        run_grid(changed, copy, runner=refuse)
    attempted.clear()
    run_grid(changed, copy, runner=record, rerun="defence=fedavg", only="attack=badnets,defence=fedavg")
    assert attempted == [("badnets__fedavg__seed0", 0.05)]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("lrr = 0.1\n", "unknown key 'lrr'"),  # appended to [attacks.badnets]
        ('"attack.num-attackerz" = 1\n', "unknown key 'attack.num-attackerz'"),
        ("[defences.krum]\n\"strategy.krum.num-malicous\" = 1\n", "strategy.krum.num-malicous"),
        ("[defences.krum]\nexperiment = \"x\"\n", "grid key 'defences.krum.experiment'"),
        ('"attack.targets" = 12\n', "attack.targets"),
        ('[attacks.blended]\n"attack.targets" = 1\n', "grid key 'attacks.blended': attack.num-attackers is 0"),
        ("[defences.bulyan]\n", "strategy 'bulyan'"),  # Bulyan needs 4f + 3 = 7 clients per round, not 3
    ],
)
def test_a_bad_grid_fails_before_anything_runs(tmp_path, cache_dir, extra, named, capsys):
    text = GRID_TOML.replace('defences = ["fedavg", "median"]\n', "") if extra.startswith("[defences") else GRID_TOML
    grid_path = write_grid(tmp_path, cache_dir, text, extra)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("[", r"\[")):
        run_grid(read_grid(grid_path), out, runner=refuse)
    assert not out.exists()
    assert main(["bench", str(grid_path), "--out", str(out)]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_unknown_top_level_key_and_only_filter(tmp_path, cache_dir):
    with pytest.raises(ConfigError, match="unknown grid key.*'defenses'"):
        parse_grid({"defenses": ["krum"]})
    grid = read_grid(write_grid(tmp_path, cache_dir))
    cells = grid.cells()
    chosen = select_cells(cells, "attack=badnets,defence=fedavg,median", grid)
    assert [c.name for c in chosen] == ["badnets__fedavg__seed0", "badnets__median__seed0"]
    with pytest.raises(ConfigError, match="--only defence=krum: not in the grid"):
        select_cells(cells, "defence=krum", grid)


def test_dry_run_lists_cells_and_writes_nothing(finished, tmp_path, capsys):
    grid_path, out, _ = finished
    fresh = tmp_path / "fresh"
    assert main(["bench", str(grid_path), "--out", str(fresh), "--dry-run", "--only", "defence=median"]) == 0
    printed = capsys.readouterr().out
    assert "none__median__seed0" in printed and "none__fedavg__seed0" not in printed
    assert not fresh.exists()
    assert main(["bench", str(grid_path), "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("done") >= 4


def test_mean_and_sample_std_over_seeds():
    assert format_stat([0.4, 0.6]) == "0.500 ± 0.141"
    assert format_stat([0.25]) == "0.250"
    assert format_stat(["", 0.2, 0.4], total=3) == "0.300 ± 0.141 (2/3)"
    assert format_stat(["", ""]) == "—"


def test_pretraining_runs_once_per_seed_and_every_cell_starts_from_it(tmp_path, cache_dir):
    text = GRID_TOML.replace('seeds = [0]\n', 'seeds = [0]\npretrain-rounds = 2\n').replace(
        "num-server-rounds = 2", "num-server-rounds = 1"
    ).replace('defences = ["fedavg", "median"]', 'defences = ["fedavg"]')
    grid_path = write_grid(tmp_path, cache_dir, text)
    out = tmp_path / "out"
    runner = CountingRunner()
    counts = run_grid(read_grid(grid_path), out, runner=runner)
    assert counts == {"skipped": 0, "done": 2, "failed": 0, "left": 0}
    assert runner.cells == ["pretraining__seed0", "none__fedavg__seed0", "badnets__fedavg__seed0"]

    weights = out / "pretraining" / "seed0.pt"
    (pretraining_run,) = [p for p in (out / "pretraining" / "seed0").iterdir() if (p / "summary.json").is_file()]
    pretraining_config = json.loads((pretraining_run / "config.json").read_text())
    assert pretraining_config["num-server-rounds"] == 2 and pretraining_config["attack"]["num-attackers"] == 0
    assert weights.read_bytes() == (pretraining_run / "model.pt").read_bytes()
    for cell in ("none__fedavg__seed0", "badnets__fedavg__seed0"):
        (run_dir,) = [p for p in (out / "cells" / cell).iterdir() if (p / "config.json").is_file()]
        assert json.loads((run_dir / "config.json").read_text())["model"]["init"] == str(weights.resolve())
    assert "pre-trained for 2 clean FedAvg rounds" in (out / "results.md").read_text()

    assert run_grid(read_grid(grid_path), out, runner=refuse)["skipped"] == 2  # nothing reruns
    moved = tmp_path / "moved"  # cells record the absolute path of the pre-training: moving the folder keeps them done
    shutil.copytree(out, moved)
    assert run_grid(read_grid(grid_path), moved, runner=refuse)["skipped"] == 2
    write_grid(tmp_path, cache_dir, text.replace("pretrain-rounds = 2", "pretrain-rounds = 3"))
    with pytest.raises(ConfigError, match="pre-training seed 0: the existing run .* num-server-rounds"):
        run_grid(read_grid(grid_path), out, runner=refuse)
    write_grid(tmp_path, cache_dir, text, extra='"model.init" = "elsewhere.pt"\n')
    with pytest.raises(ConfigError, match=r"grid key 'attacks\.badnets\.model\.init'"):
        read_grid(grid_path)


def test_a_failed_pretraining_is_recorded_and_its_cells_do_not_run(tmp_path, cache_dir):
    text = GRID_TOML.replace('seeds = [0]\n', 'seeds = [0]\npretrain-rounds = 2\n')
    grid_path = write_grid(tmp_path, cache_dir, text)
    out = tmp_path / "out"

    def pretraining_breaks(config, quiet):
        assert config.experiment == "pretraining__seed0", f"{config.experiment} ran without its pre-trained model"
        raise RuntimeError("the simulation engine did not start")

    counts = run_grid(read_grid(grid_path), out, runner=pretraining_breaks)
    assert counts == {"skipped": 0, "done": 0, "failed": 4, "left": 0}
    assert "the simulation engine did not start" in (out / "pretraining" / "seed0-error.txt").read_text()
    assert not (out / "pretraining" / "seed0.pt").exists()


def test_asr_heatmap_marks_cells_whose_model_collapsed():
    # dp-fixed-clipping's strong noise leaves a one-class model (clean 0.10): its ASR of 1.0
    # for a backdoor aimed at that class is the collapse, not the attack.
    clean = [[0.97, 0.96, None], [0.10, 0.48, 0.49]]
    assert collapsed_cells(clean) == [[False, False, False], [True, True, False]]
    assert collapsed_cells([[None]]) == [[False]]


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "experiments").glob("bench-*.toml")), ids=lambda p: p.name
)
def test_the_shipped_grids_validate_every_cell(path, tmp_path, capsys):
    # Every cell's run config is parsed by the dry run (a bad key or value would name itself).
    grid = read_grid(path)
    assert main(["bench", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    cells = [f"{a}__{d}__seed{s}" for a in grid.attacks for d in grid.defences for s in grid.seeds]
    assert all(cell in printed for cell in cells)
    assert not (tmp_path / "out").exists()
