"""docs/custom-defence.md: its example defence is the file it shows, does what it says on
constructed updates, and joins an existing bench output as one more row; a defence needs no
constructor, and one written the old way still works."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategy
from pydantic import Field

from flowerbed.bench.grid import read_grid
from flowerbed.bench.run import run_grid, simulate
from flowerbed.strategies.core.base import FlowerbedStrategy, aggregate_train_metrics, flower_kwargs
from flowerbed.strategies.core.params import StrategyParams
from flowerbed.strategies.core.update_defence import Aggregation, UpdateDefence
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


def batch_of(updates: np.ndarray, examples: list[int]) -> UpdateBatch:
    """The round's batch for these update rows (global model 0) and example counts, an integer counter beside."""
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
    return UpdateBatch.from_contents(contents, global_arrays)


def test_norm_filter_rejects_the_long_update_and_averages_the_rest(my_defences):
    updates = np.array([[1.0, 0.0, 0.0], [0.0, 1.2, 0.0], [0.0, 0.0, 0.9], [8.0, 8.0, 0.0]], dtype=np.float32)
    examples = [10, 30, 20, 40]
    batch = batch_of(updates, examples)

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
# The default boost (10) among 3 clients drives FedAvg's BatchNorm variances negative: a NaN
# model, which stops a run (test_round_failures.py). Boost 3 keeps this cell a finished run.
"attack.model-replacement.boost" = 3.0

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


# ---------------------------------------------------------------- constructors: none needed, the old form still works


class FactorParams(StrategyParams):
    factor: float = Field(2.0, gt=1.0)


class CountsRounds(UpdateDefence):
    """A defence with state and no constructor: ``init_state`` sets up its memory."""

    name = "counts-rounds"
    Params = FactorParams

    def init_state(self) -> None:
        super().init_state()
        self.rounds_seen = 0

    def aggregate_updates(self, batch: UpdateBatch, server_round: int) -> Aggregation:
        self.rounds_seen += 1
        update = batch.example_weights.to(batch.learned.dtype) @ batch.learned
        return Aggregation(update, torch.ones(batch.num_clients, dtype=torch.bool))


class CountsRoundsOldStyle(UpdateDefence):
    """The same defence with the constructor a user may have written before ``init_state``."""

    name = "counts-rounds-old-style"
    Params = FactorParams
    aggregate_updates = CountsRounds.aggregate_updates

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rounds_seen = 0


@pytest.mark.parametrize("defence_class", [CountsRounds, CountsRoundsOldStyle])
def test_a_defence_needs_no_constructor_and_one_written_the_old_way_still_works(defence_class):
    defence = defence_class({"factor": 3.0}, num_clients_per_round=4, seed=5)
    assert (defence.params.factor, defence.num_clients_per_round, defence.seed, defence.root_data) == (3.0, 4, 5, None)
    assert (defence.fraction_train, defence.min_train_nodes, defence.min_available_nodes) == (1.0, 4, 4)
    assert defence.rounds_seen == 0 and defence.last_flagged == []
    updates = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=np.float32)
    result = defence.aggregate_updates(batch_of(updates, [10, 30]), server_round=1)
    torch.testing.assert_close(result.update, torch.tensor([0.25, 1.5, 0.0]))
    assert defence.rounds_seen == 1
    with pytest.raises(ValueError, match=rf"^strategy\.{defence_class.name}\.factor: "):
        defence_class({"factor": 0.5}, num_clients_per_round=4)


class WrapsFedMedian(FlowerbedStrategy, flwr_strategy.FedMedian):
    """A Flower strategy wrapped the short way: ``init_flower`` calls its constructor."""

    name = "wraps-fedmedian"

    def init_flower(self, params: StrategyParams, flower_kwargs: dict) -> None:
        flwr_strategy.FedMedian.__init__(self, **flower_kwargs)


class WrapsFedMedianOldStyle(FlowerbedStrategy, flwr_strategy.FedMedian):
    """The same, with the whole constructor written out as before ``init_flower``."""

    name = "wraps-fedmedian-old-style"

    def __init__(self, params=None, *, fraction_train=1.0, num_clients_per_round, seed=0, root_data=None) -> None:
        self.init_flowerbed(params, num_clients_per_round, seed)
        flwr_strategy.FedMedian.__init__(self, **flower_kwargs(fraction_train, num_clients_per_round))


@pytest.mark.parametrize("strategy_class", [WrapsFedMedian, WrapsFedMedianOldStyle])
def test_a_flower_strategy_wrapped_either_way_gets_the_same_settings(strategy_class):
    strategy = strategy_class(None, fraction_train=0.5, num_clients_per_round=4, seed=2)
    assert (strategy.fraction_train, strategy.min_train_nodes, strategy.min_available_nodes) == (0.5, 4, 4)
    assert strategy.train_metrics_aggr_fn is aggregate_train_metrics
    assert (strategy.seed, strategy.num_clients_per_round, strategy.last_flagged) == (2, 4, [])
    with pytest.raises(ValueError, match=rf"^strategy\.{strategy_class.name}\.bogus: "):
        strategy_class({"bogus": 1}, num_clients_per_round=4)


def test_a_flower_strategy_without_init_flower_says_what_to_define():
    class Forgot(FlowerbedStrategy, flwr_strategy.FedMedian):
        name = "forgot"

    with pytest.raises(NotImplementedError, match="define init_flower"):
        Forgot(num_clients_per_round=4)
