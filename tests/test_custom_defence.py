"""docs/custom-defence.md: its example defence is the file it shows, does what it says on
constructed updates, and joins an existing bench output as one more row."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from flowerbed.bench.command import run_grid, simulate
from flowerbed.bench.grid import read_grid
from flowerbed.strategies.core.updates import UpdateBatch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"


@pytest.fixture
def my_defences(monkeypatch, isolated_plugins):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the driver
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")])))
    import my_defences

    return my_defences


def test_the_example_is_the_file_the_doc_shows():
    source = (EXAMPLES / "my_defences.py").read_text()
    assert source.strip() in (ROOT / "docs" / "custom-defence.md").read_text()


def test_norm_filter_rejects_the_long_update_and_averages_the_rest(my_defences):
    updates = np.array([[1.0, 0.0, 0.0], [0.0, 1.2, 0.0], [0.0, 0.0, 0.9], [8.0, 8.0, 0.0]], dtype=np.float32)
    examples = [10, 30, 20, 40]
    contents = [
        RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(row), "steps": Array(np.array(7 + i, dtype=np.int64))}),
                "metrics": MetricRecord({"num-examples": n, "partition-id": 100 + i}),
            }
        )
        for i, (row, n) in enumerate(zip(updates, examples, strict=True))
    ]
    global_arrays = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32)), "steps": Array(np.array(5, dtype=np.int64))})
    batch = UpdateBatch.from_contents(contents, global_arrays)

    defence = my_defences.NormFilter({"factor": 3.0}, num_clients_per_round=4)
    result = defence.aggregate_updates(batch, server_round=1)
    assert result.accepted.tolist() == [True, True, True, False]  # 11.3 > 3 x median 1.1
    expected = (10 * updates[0] + 30 * updates[1] + 20 * updates[2]) / 60
    torch.testing.assert_close(result.update, torch.from_numpy(expected))
    with pytest.raises(ValueError, match="strategy.norm-filter.factor"):
        my_defences.NormFilter({"factor": 0.5}, num_clients_per_round=4)


def test_the_defence_joins_a_finished_bench_output_as_one_more_row(my_defences, tmp_path, cache_dir):
    grid = """
name = "unit"
seeds = [0]

[base]
num-server-rounds = 2
num-clients = 3
fraction-train = 1.0
"data.train-size" = 300
"data.test-size" = 60
"data.cache-dir" = "{cache_dir}"
"partition.name" = "iid"

[attacks.model-replacement]
"attack.name" = "model-replacement"
"attack.num-attackers" = 1

[defences.fedavg]
{extra}"""
    path = tmp_path / "grid.toml"
    path.write_text(grid.format(cache_dir=cache_dir, extra=""))
    out = tmp_path / "out"
    assert run_grid(read_grid(path), out, runner=simulate) == {"skipped": 0, "done": 1, "failed": 0, "left": 0}

    ran: list[str] = []

    def counting(config, quiet):
        ran.append(config.experiment)
        return simulate(config, quiet)

    extra = '[defences.norm-filter]\n"strategy.name" = "my_defences:NormFilter"\n"strategy.norm-filter.factor" = 3.0\n'
    path.write_text(grid.format(cache_dir=cache_dir, extra=extra))
    assert run_grid(read_grid(path), out, runner=counting) == {"skipped": 1, "done": 1, "failed": 0, "left": 0}
    assert ran == ["model-replacement__norm-filter__seed0"]
    with open(out / "results.csv", newline="") as handle:
        rows = {row["defence"]: row for row in csv.DictReader(handle)}
    # The x10 model-replacement update is the one rejected, in both rounds.
    assert float(rows["norm-filter"]["detection_recall"]) == 1.0
    assert float(rows["norm-filter"]["detection_precision"]) == 1.0
    assert rows["fedavg"]["detection_recall"] == ""
    assert "| model-replacement | norm-filter |" in (out / "results.md").read_text()
    shutil.rmtree(out)
