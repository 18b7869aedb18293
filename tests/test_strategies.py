"""flowerbed strategies through Flower's Message API: Flower parity, detection reports, validation, sanitising."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategy
from flwr.serverapp.strategy.multikrum import compute_distances
from flwr.supercore.task_identity import TaskIdentity

from flowerbed.platform.registry import STRATEGIES
from flowerbed.platform.sanitize import sanitize_replies
from flowerbed.platform.server_model import ServerModelHooks
from flowerbed.strategies.core.update_defence import UpdateDefence
from flowerbed.strategies.core.updates import UpdateBatch, UpdateMatrixBuffer
from flowerbed.strategies.robust_aggregation.coordinatewise import closest_to_median_window
from flowerbed.strategies.robust_aggregation.krum_selection import squared_distances

SHAPES = {"hidden.weight": (6, 5), "hidden.bias": (6,), "out.weight": (4, 6), "out.bias": (4,)}
FLOAT_SIZE = sum(math.prod(shape) for shape in SHAPES.values())
COUNTER = "bn.num_batches_tracked"
NUM_HONEST, NUM_ATTACKERS = 7, 3
NUM_CLIENTS = NUM_HONEST + NUM_ATTACKERS
ATTACKERS = list(range(NUM_HONEST, NUM_CLIENTS))
PID_OFFSET = 20  # partition ids 20..29, so ids are not confused with row indices


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages need the identity Flower's runtime sets for a ServerApp process."""
    for attribute, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attribute, value)


class FakeGrid:
    """The part of Flower's Grid that FedAvg.configure_train uses."""

    def get_node_ids(self):
        return list(range(1, NUM_CLIENTS + 1))


def global_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {key: rng.normal(size=shape).astype(np.float32) for key, shape in list(SHAPES.items())[:2]}
    arrays[COUNTER] = np.array(100, dtype=np.int64)  # an integer array between float ones
    arrays.update({key: rng.normal(size=shape).astype(np.float32) for key, shape in list(SHAPES.items())[2:]})
    return arrays


def split(vector: np.ndarray) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for key, shape in SHAPES.items():
        size = math.prod(shape)
        out[key] = vector[offset : offset + size].reshape(shape)
        offset += size
    return out


def flat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[key], dtype=np.float64).ravel() for key in SHAPES])


def output_layer_vector(weight: np.ndarray, bias: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    return np.concatenate([hidden, weight.ravel(), bias])


def scenario_updates(kind: str = "aligned", seed: int = 1) -> np.ndarray:
    """Float updates (clients x FLOAT_SIZE): rows 0..6 honest, 7..9 attackers.

    aligned: honest updates share one direction (norms 0.8x..1.2x) whose output layer
    spreads its energy evenly over the 4 labels; attackers share another direction
    that concentrates the output layer on label 0 and is three times as long.
    diverse: honest updates are independent; the attackers are three identical sybils.
    """
    rng = np.random.default_rng(seed)
    hidden_size = 36
    if kind == "aligned":
        honest_direction = output_layer_vector(
            0.1 * rng.choice([-1.0, 1.0], size=(4, 6)), np.full(4, 0.1), 0.1 * rng.normal(size=hidden_size)
        )
        honest = np.linspace(0.8, 1.2, NUM_HONEST)[:, None] * honest_direction
        attack_weight = np.full((4, 6), 0.001)
        attack_weight[0] = 0.5
        attack_direction = output_layer_vector(
            attack_weight, np.array([1.0, 0.001, 0.001, 0.001]), 0.3 * rng.normal(size=hidden_size)
        )
        attackers = attack_direction + 0.001 * rng.normal(size=(NUM_ATTACKERS, FLOAT_SIZE))
    elif kind == "diverse":
        honest = 0.1 * rng.normal(size=(NUM_HONEST, FLOAT_SIZE))
        attackers = np.tile(0.1 * rng.normal(size=FLOAT_SIZE), (NUM_ATTACKERS, 1))
    else:
        raise ValueError(kind)
    return np.vstack([honest, attackers])


def client_models(
    updates: np.ndarray, base: dict[str, np.ndarray], counter_step: int = 1
) -> list[dict[str, np.ndarray]]:
    """Client models = global + update; client i's integer counter advanced by 10 + i * counter_step."""
    models = []
    for index, row in enumerate(updates):
        model = {key: (base[key] + value).astype(np.float32) for key, value in split(row).items()}
        model[COUNTER] = np.array(int(base[COUNTER]) + 10 + index * counter_step, dtype=np.int64)
        models.append(model)
    return models


def make_reply(arrays: dict[str, np.ndarray], partition_id: int, num_examples: int = 10) -> Message:
    ordered = {key: Array(np.asarray(arrays[key])) for key in global_model()}
    content = RecordDict(
        {
            "arrays": ArrayRecord(ordered),
            "metrics": MetricRecord({"num-examples": num_examples, "partition-id": partition_id, "train_loss": 0.5}),
        }
    )
    return Message(content=content, dst_node_id=partition_id + 1, message_type=MessageType.TRAIN)


def make_replies(models: list[dict[str, np.ndarray]]) -> list[Message]:
    return [make_reply(model, PID_OFFSET + i, num_examples=10 + i) for i, model in enumerate(models)]


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.asarray(value)) for key, value in arrays.items()})


def as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}


def run_round(strategy, base: dict[str, np.ndarray], models: list[dict[str, np.ndarray]], server_round: int = 1):
    global_record = to_record(base)
    messages = strategy.configure_train(server_round, global_record, ConfigRecord(), FakeGrid())
    assert len(list(messages)) == NUM_CLIENTS
    return strategy.aggregate_train(server_round, make_replies(models))


def predict(arrays: ArrayRecord, inputs: torch.Tensor) -> torch.Tensor:
    """The test model: 5 -> 6 (ReLU) -> 4 labels."""
    tensors = {key: torch.from_numpy(array.numpy()) for key, array in arrays.items()}
    hidden = torch.relu(inputs @ tensors["hidden.weight"].T + tensors["hidden.bias"])
    return torch.softmax(hidden @ tensors["out.weight"].T + tensors["out.bias"], dim=1)


def hooks(base: dict[str, np.ndarray], root_update: np.ndarray) -> ServerModelHooks:
    root_model = {**base, **{k: (base[k] + v).astype(np.float32) for k, v in split(root_update).items()}}
    return ServerModelHooks(root_update=lambda arrays, rnd: to_record(root_model), predict=predict, input_shape=(5,))


def build(name: str, params=None, **kwargs):
    return STRATEGIES.get(name)(params, fraction_train=1.0, num_clients_per_round=NUM_CLIENTS, seed=7, **kwargs)


# ---------------------------------------------------------------- checks every registered strategy passes

# The shared checks below run on every registered strategy: a new one joins them when it registers.
# Some need to know what to expect of it: it must then be listed in REPORTS and STATISTICS_RULE
# (test_every_strategy_is_listed_in_the_tables_the_shared_checks_read says what to add).
STRATEGY_NAMES = STRATEGIES.names()

# How a rule reports a round: whether it can leave a client out as a whole ("flags": it is
# scored on detection precision and recall) and whether it reports per-client weights.
REPORTS = {
    "fedavg": "nothing", "median": "nothing", "trimmed-mean": "nothing", "dp-fixed-clipping": "nothing", "rlr": "nothing",
    "krum": "flags", "multi-krum": "flags", "bulyan": "flags", "flame": "flags", "deepsight": "flags", "freqfed": "flags",
    "foolsgold": "flags and weights", "fltrust": "flags and weights",
    "rfa": "weights", "centered-clipping": "weights", "norm-clipping": "weights",
}  # fmt: skip
LEAVE_CLIENTS_OUT = {name for name, reports in REPORTS.items() if "flags" in reports}
WEIGHT_CLIENTS = {name for name, reports in REPORTS.items() if "weights" in reports}

# What a rule makes of BatchNorm's running statistics: "coordinatewise", its own per-coordinate
# aggregate (Bulyan: its second step); "mean", Flower's example-weighted mean of the clients it
# kept; "median", the coordinate-wise median of the clients it kept (every UpdateDefence).
STATISTICS_RULE = {
    "median": "coordinatewise", "trimmed-mean": "coordinatewise", "bulyan": "coordinatewise",
    "fedavg": "mean", "krum": "mean", "multi-krum": "mean",
    "dp-fixed-clipping": "median", "norm-clipping": "median", "flame": "median", "foolsgold": "median",
    "fltrust": "median", "rlr": "median", "rfa": "median", "centered-clipping": "median", "deepsight": "median",
    "freqfed": "median",
}  # fmt: skip
COORDINATEWISE = {name for name, rule in STATISTICS_RULE.items() if rule == "coordinatewise"}
STATISTICS_BY_MEAN = {name for name, rule in STATISTICS_RULE.items() if rule == "mean"}

TABLES = {  # every registered strategy must be in these, with what the entry says
    "REPORTS": (REPORTS, '"flags", "weights", "flags and weights" or "nothing"'),
    "STATISTICS_RULE": (STATISTICS_RULE, '"coordinatewise", "mean" or "median" (what becomes of running statistics)'),
}

# Optional per-strategy settings; a strategy not listed runs with its paper defaults.
# The Krum family is told of the three attackers (Bulyan, which needs n >= 4f + 3, of one).
ATTACKER_PARAMS = {"krum": {"num-malicious": 3}, "multi-krum": {"num-malicious": 3}, "bulyan": {"num-malicious": 1}}
# Clipping rules whose bound is set to an honest update's norm, so that the three long attacker updates are clipped.
CLIP_BOUND_PARAM = {"norm-clipping": "norm-bound", "centered-clipping": "tau"}
# Rules that carry state from round to round (saved in checkpoint.pt), and settings under which it matters.
STATEFUL = {"foolsgold", "centered-clipping"}
CHECKPOINT_PARAMS = {"centered-clipping": {"tau": 0.2}}  # clips, so the starting point (last round's aggregate) matters


def listed(name: str, table_name: str):
    """``name``'s entry in the table ``table_name``, or a failure saying what to add there."""
    table, what = TABLES[table_name]
    if name not in table:
        pytest.fail(f"strategy '{name}' is registered but missing from {table_name} in tests/test_strategies.py: add it ({what})")
    return table[name]


def build_for_checks(name: str, params=None, **kwargs):
    """``build``, or a failure saying what to add when the strategy rejects the shared checks' settings."""
    try:
        return build(name, params, **kwargs)
    except ValueError as error:
        pytest.fail(
            f"strategy '{name}' cannot be built for the shared checks ({NUM_CLIENTS} clients, {NUM_ATTACKERS} attackers):"
            f" {error}; give it params that fit in ATTACKER_PARAMS (tests/test_strategies.py)"
        )


def test_every_strategy_is_registered_under_its_own_name():
    assert STRATEGY_NAMES, "no strategy is registered"
    for name in STRATEGY_NAMES:
        assert STRATEGIES.get(name).name == name  # error messages name strategy.<name>.<param>


def test_every_strategy_is_listed_in_the_tables_the_shared_checks_read():
    for table_name, (table, what) in TABLES.items():
        missing = [name for name in STRATEGY_NAMES if name not in table]
        assert not missing, f"add {missing} to {table_name} in tests/test_strategies.py ({what})"
    optional = {
        "ATTACKER_PARAMS": ATTACKER_PARAMS,
        "CLIP_BOUND_PARAM": CLIP_BOUND_PARAM,
        "STATEFUL": STATEFUL,
        "CHECKPOINT_PARAMS": CHECKPOINT_PARAMS,
    }
    for table_name, table in {**{name: table for name, (table, _) in TABLES.items()}, **optional}.items():
        stale = sorted(set(table) - set(STRATEGY_NAMES))
        assert not stale, f"{table_name} in tests/test_strategies.py lists {stale}, which no strategy is registered as"


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_runs_a_round_and_reports(name):
    base = global_model()
    updates = scenario_updates("aligned")
    strategy = build_for_checks(name, root_data=hooks(base, updates[0]))  # the Krum family: f = 1, its default
    arrays, metrics = run_round(strategy, base, client_models(updates, base))
    assert arrays is not None and list(arrays.keys()) == list(base.keys())
    for key, value in as_numpy(arrays).items():
        assert value.shape == base[key].shape and np.isfinite(value).all()
    assert metrics is not None and "partition-id" not in metrics and "train_loss" in metrics
    assert isinstance(strategy.last_flagged, list) and isinstance(strategy.last_weights, dict)
    assert set(strategy.last_flagged) <= set(range(PID_OFFSET, PID_OFFSET + NUM_CLIENTS))


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_only_rules_that_can_leave_a_client_out_are_scored_on_flags(name):
    """A rule that never excludes a client (RLR, RFA, clipping, ...) gets no precision/recall of 0; weighting rules report weights."""
    listed(name, "REPORTS")
    base = global_model()
    updates = scenario_updates("aligned")
    params = ATTACKER_PARAMS.get(name)
    if name in CLIP_BOUND_PARAM:  # bounds that clip the three long attacker updates
        params = {CLIP_BOUND_PARAM[name]: float(np.linalg.norm(updates[0]))}
    strategy = build_for_checks(name, params, root_data=hooks(base, updates[0]))
    run_round(strategy, base, client_models(updates, base))
    assert strategy.flags_clients == (name in LEAVE_CLIENTS_OUT)
    if not strategy.flags_clients:
        assert strategy.last_flagged == []
    if name in WEIGHT_CLIENTS:
        assert sorted(strategy.last_weights) == list(range(PID_OFFSET, PID_OFFSET + NUM_CLIENTS))
        honest = np.mean([strategy.last_weights[pid] for pid in range(PID_OFFSET, PID_OFFSET + NUM_HONEST)])
        attackers = np.mean([strategy.last_weights[pid] for pid in attacker_ids()])
        if name != "foolsgold":  # FoolsGold down-weights sybils (the "diverse" scenario), not long updates
            assert attackers < honest
    else:
        assert strategy.last_weights == {}


STATISTICS = {"bn.running_mean": (6,), "bn.running_var": (6,)}


def with_statistics(arrays: dict[str, np.ndarray], moved: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``arrays`` plus BatchNorm running statistics (global ones, or moved by the 12 values ``moved``)."""
    statistics = {"bn.running_mean": np.zeros(6, dtype=np.float32), "bn.running_var": np.ones(6, dtype=np.float32)}
    if moved is not None:
        statistics = {"bn.running_mean": moved[:6].astype(np.float32), "bn.running_var": (1 + np.abs(moved[6:])).astype(np.float32)}
    return {**arrays, **statistics}


def statistics_round(name: str, moves: np.ndarray | None, scenario: str = "aligned"):
    """One round of ``name`` on ``scenario``, the clients' running statistics moved by ``moves`` (or not)."""
    base = with_statistics(global_model())
    updates = scenario_updates(scenario)
    models = [with_statistics(model, None if moves is None else moves[i]) for i, model in enumerate(client_models(updates, base))]
    strategy = build_for_checks(name, ATTACKER_PARAMS.get(name), root_data=hooks(base, updates[0]))
    strategy.configure_train(1, to_record(base), ConfigRecord(), FakeGrid())
    replies = [
        Message(
            content=RecordDict(
                {
                    "arrays": ArrayRecord({key: Array(np.asarray(value)) for key, value in model.items()}),
                    "metrics": MetricRecord({"num-examples": 10 + i, "partition-id": PID_OFFSET + i, "train_loss": 0.5}),
                }
            ),
            dst_node_id=i + 1,
            message_type=MessageType.TRAIN,
        )
        for i, model in enumerate(models)
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    return as_numpy(arrays), strategy.last_flagged, models


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_defences_measure_learned_weights_not_batchnorm_running_statistics(name):
    """Clients whose running statistics moved a lot (here far more than their weights) are judged by their weights alone."""
    listed(name, "STATISTICS_RULE")
    still, flagged_still, _ = statistics_round(name, None)
    moves = np.random.default_rng(3).normal(scale=50.0, size=(NUM_CLIENTS, 12))
    moves[ATTACKERS] = 0.0  # the attackers' statistics stay put: only the honest clients' look "anomalous"
    moved, flagged_moved, models = statistics_round(name, moves)
    assert flagged_moved == flagged_still
    for key in SHAPES:  # the learned weights come out as if no statistic had moved (same seeded noise too)
        np.testing.assert_allclose(moved[key], still[key], rtol=1e-5, atol=1e-6, err_msg=key)
    if name in COORDINATEWISE:
        return
    accepted = [i for i in range(NUM_CLIENTS) if PID_OFFSET + i not in flagged_moved]
    for key in STATISTICS:
        if name in STATISTICS_BY_MEAN:  # the example-weighted mean of the clients that entered the aggregate
            weights = np.array([10 + i for i in accepted], dtype=np.float64)
            expected = sum(w * models[i][key] for w, i in zip(weights / weights.sum(), accepted))
        else:  # defences that clip or down-weight: the accepted clients' coordinate-wise median
            expected = np.median(np.stack([models[i][key] for i in accepted]), axis=0)
        np.testing.assert_allclose(moved[key], expected, rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("name", [name for name in STRATEGY_NAMES if name not in COORDINATEWISE | STATISTICS_BY_MEAN])
def test_a_boosted_attackers_running_statistics_cannot_pass_a_defence(name):
    """Model replacement scales every float entry, running statistics included: a defence that clips or
    down-weights the attacker's weights must not let its statistics through at full weight."""
    listed(name, "STATISTICS_RULE")
    honest = np.random.default_rng(4).normal(scale=0.1, size=(NUM_CLIENTS, 12))
    boosted = honest.copy()
    boosted[ATTACKERS] = 1000.0  # one far-off value per statistic for every attacker
    clean, _, _ = statistics_round(name, honest, "diverse")  # the scenario in which even FoolsGold accepts the
    attacked, _, _ = statistics_round(name, boosted, "diverse")  # honest majority (aligned: it flags them)
    for key in STATISTICS:
        assert np.abs(attacked[key] - clean[key]).max() < 1.0, key  # a mean would move them by ~300


UPDATE_DEFENCES = [name for name in STRATEGY_NAMES if issubclass(STRATEGIES.get(name), UpdateDefence)]


@pytest.mark.parametrize("name", UPDATE_DEFENCES)
def test_reused_update_matrix_gives_the_rounds_a_fresh_one_gives(name, monkeypatch):
    """Three rounds (10, 7, then 10 clients) through one strategy, whose update matrix memory is kept
    from round to round, equal the same rounds with a freshly allocated matrix each round."""
    base = global_model()
    rounds = [scenario_updates("aligned", 1), scenario_updates("diverse", 2)[:7], scenario_updates("aligned", 3)]

    def run_three_rounds():
        strategy = build_for_checks(name, root_data=hooks(base, rounds[0][0]))
        results, pointers = [], []
        for server_round, updates in enumerate(rounds, start=1):
            strategy.configure_train(server_round, to_record(base), ConfigRecord(), FakeGrid())
            arrays, _ = strategy.aggregate_train(server_round, make_replies(client_models(updates, base)))
            results.append(as_numpy(arrays))
            pointers.append(strategy._update_matrix._storage.data_ptr())
        return results, pointers

    kept, pointers = run_three_rounds()
    assert len(set(pointers)) == 1  # the second and third rounds wrote into the first round's memory
    kept_rows = UpdateMatrixBuffer.rows

    def fresh_rows(buffer, num_rows, num_columns):
        buffer._storage = None  # forget the last round's memory: allocate anew
        return kept_rows(buffer, num_rows, num_columns)

    monkeypatch.setattr(UpdateMatrixBuffer, "rows", fresh_rows)
    fresh, _ = run_three_rounds()
    for kept_round, fresh_round in zip(kept, fresh, strict=True):
        for key in base:
            np.testing.assert_array_equal(kept_round[key], fresh_round[key], err_msg=key)


def test_update_batch_records_each_rows_floating_norm():
    base = global_model()
    updates = scenario_updates("diverse")
    contents = [reply.content for reply in make_replies(client_models(updates, base))]
    batch = UpdateBatch.from_contents(contents, to_record(base), buffer=UpdateMatrixBuffer())
    floating = np.vstack([flat(model) - flat(base) for model in client_models(updates, base)])
    np.testing.assert_allclose(batch.learned_norms.numpy(), np.linalg.norm(floating, axis=1), rtol=1e-6)
    np.testing.assert_allclose(batch.learned.numpy(), floating[:, batch_order(batch)], rtol=0, atol=1e-6)


def batch_order(batch: UpdateBatch) -> np.ndarray:
    """Column order of the batch's floating part in terms of :func:`flat`'s (SHAPES order)."""
    starts = dict(zip(SHAPES, np.cumsum([0] + [math.prod(shape) for shape in SHAPES.values()])[:-1], strict=True))
    return np.concatenate(
        [starts[key] + np.arange(math.prod(shape)) for key, shape, _ in batch.layout.learned_segments()]
    )


# ---------------------------------------------------------------- same aggregate as Flower's own strategy

FLOWER_TWINS = [
    ("fedavg", None, lambda: flwr_strategy.FedAvg()),
    ("krum", {"num-malicious": 2}, lambda: flwr_strategy.Krum(num_malicious_nodes=2)),
    (
        "multi-krum",
        {"num-malicious": 2, "num-selected": 5},
        lambda: flwr_strategy.MultiKrum(num_malicious_nodes=2, num_nodes_to_select=5),
    ),
    ("bulyan", {"num-malicious": 1}, lambda: flwr_strategy.Bulyan(num_malicious_nodes=1)),
    ("median", None, lambda: flwr_strategy.FedMedian()),
    ("trimmed-mean", {"beta": 0.2}, lambda: flwr_strategy.FedTrimmedAvg(beta=0.2)),
]


KRUM_FAMILY = {"krum", "multi-krum", "bulyan"}

# flowerbed computes these rules itself (robust_aggregation/coordinatewise.py, krum_selection.py);
# trimmed mean and Bulyan sum their kept float32 values in another order than Flower: round-off.
SUMS_IN_ANOTHER_ORDER = {"trimmed-mean", "bulyan"}


def assert_same_aggregate(ours: ArrayRecord, theirs: ArrayRecord, exact: bool) -> None:
    """Same keys, shapes and dtypes (an integer array's median is float64, as in Flower) and values."""
    assert list(ours.keys()) == list(theirs.keys())
    for key in theirs:
        mine, flowers = ours[key].numpy(), theirs[key].numpy()
        assert (mine.dtype, mine.shape) == (flowers.dtype, flowers.shape), key
        if exact:
            np.testing.assert_array_equal(mine, flowers, err_msg=key)
        else:  # a few ulps of the values summed
            tolerance = 8 * np.finfo(flowers.dtype).eps * max(1.0, float(np.abs(flowers).max()))
            np.testing.assert_allclose(mine, flowers, rtol=0, atol=tolerance, err_msg=key)


@pytest.mark.parametrize("scenario", ["aligned", "diverse"])
@pytest.mark.parametrize(("name", "params", "flower"), FLOWER_TWINS, ids=[t[0] for t in FLOWER_TWINS])
def test_aggregate_equals_flowers(name, params, flower, scenario):
    """10 clients (an even count: the median averages the two middle values); "diverse" has identical sybils.

    The Krum family leaves integer arrays out of its distances (Flower's counts them): the clients' counters
    are equal here, where both must agree. Then the three identical sybils of "diverse" tie exactly, and the
    same selected clients may be summed in another order (a few ulps).
    """
    base = global_model()
    models = client_models(scenario_updates(scenario), base, counter_step=0 if name in KRUM_FAMILY else 1)
    ours, _ = run_round(build(name, params), base, models)
    theirs, _ = flower().aggregate_train(1, make_replies(models))
    ties = name in KRUM_FAMILY and scenario == "diverse"
    assert_same_aggregate(ours, theirs, exact=name not in SUMS_IN_ANOTHER_ORDER and not ties)


def wide_models(num_clients: int, seed: int = 3, equal_counters: bool = False) -> list[dict[str, np.ndarray]]:
    """Client models with a float32 array spanning several blocks of the coordinate-wise kernels, a float32
    scalar, a float64 array and an int64 counter that differs between clients (unless ``equal_counters``)."""
    rng = np.random.default_rng(seed)
    base = {
        "conv.weight": rng.normal(size=(3, 7, 1000)).astype(np.float32),
        "scale": np.array(0.5, dtype=np.float32),
        "bn.num_batches_tracked": np.array(100, dtype=np.int64),
        "double": rng.normal(size=5),
    }
    models = []
    for _ in range(num_clients):
        model = {key: (value + 0.1 * rng.normal(size=value.shape)).astype(value.dtype) for key, value in base.items()}
        model["bn.num_batches_tracked"] = base["bn.num_batches_tracked"] + rng.integers(0, 5) * (not equal_counters)
        models.append(model)
    return models


WIDE_TWINS = [
    ("median", None, 11, lambda: flwr_strategy.FedMedian()),
    ("median", None, 12, lambda: flwr_strategy.FedMedian()),
    ("trimmed-mean", {"beta": 0.1}, 11, lambda: flwr_strategy.FedTrimmedAvg(beta=0.1)),  # int(1.1) = 1 cut per tail
    ("trimmed-mean", {"beta": 0.3}, 10, lambda: flwr_strategy.FedTrimmedAvg(beta=0.3)),  # int(3.0000000000000004) = 3
    ("trimmed-mean", {"beta": 0.29}, 100, lambda: flwr_strategy.FedTrimmedAvg(beta=0.29)),  # int(28.999999999999996)
    ("trimmed-mean", {"beta": 0.0}, 11, lambda: flwr_strategy.FedTrimmedAvg(beta=0.0)),
    ("krum", {"num-malicious": 2}, 12, lambda: flwr_strategy.Krum(num_malicious_nodes=2)),
    (
        "multi-krum",
        {"num-malicious": 2, "num-selected": 6},
        11,
        lambda: flwr_strategy.MultiKrum(num_malicious_nodes=2, num_nodes_to_select=6),
    ),
    ("bulyan", {"num-malicious": 2}, 11, lambda: flwr_strategy.Bulyan(num_malicious_nodes=2)),  # theta 7: odd
    ("bulyan", {"num-malicious": 2}, 12, lambda: flwr_strategy.Bulyan(num_malicious_nodes=2)),  # theta 8: even
]


@pytest.mark.parametrize(
    ("name", "params", "num_clients", "flower"), WIDE_TWINS, ids=[f"{t[0]}-{t[1]}-{t[2]}" for t in WIDE_TWINS]
)
def test_aggregate_equals_flowers_across_blocks_dtypes_and_client_counts(name, params, num_clients, flower):
    models = wide_models(num_clients, equal_counters=name in KRUM_FAMILY)  # see test_aggregate_equals_flowers

    def replies() -> list[Message]:
        return [
            Message(
                content=RecordDict(
                    {
                        "arrays": to_record(model),
                        "metrics": MetricRecord({"num-examples": 10 + index, "partition-id": index}),
                    }
                ),
                dst_node_id=index + 1,
                message_type=MessageType.TRAIN,
            )
            for index, model in enumerate(models)
        ]

    strategy = STRATEGIES.get(name)(params, num_clients_per_round=num_clients, seed=0)
    ours, _ = strategy.aggregate_train(1, replies())
    theirs, _ = flower().aggregate_train(1, replies())
    assert_same_aggregate(ours, theirs, exact=name not in SUMS_IN_ANOTHER_ORDER)


@pytest.mark.parametrize("name", sorted(KRUM_FAMILY))
def test_krum_family_ignores_batchnorm_step_counters(name):
    """Counters that grow with each client's local steps (as BatchNorm's do) change nothing: the same models with
    equal counters give the same selection and aggregate. Flower's own rule, which counts them, selects otherwise."""
    base = global_model()
    updates = scenario_updates("aligned")
    params = {"num-malicious": 1}
    varied = client_models(updates, base, counter_step=40)  # counters 10, 50, ..., 370 steps apart
    equal = client_models(updates, base, counter_step=0)
    strategies = [build(name, params), build(name, params)]
    with_varied, _ = run_round(strategies[0], base, varied)
    with_equal, _ = run_round(strategies[1], base, equal)
    assert strategies[0].last_flagged == strategies[1].last_flagged
    for key in SHAPES:
        np.testing.assert_array_equal(as_numpy(with_varied)[key], as_numpy(with_equal)[key], err_msg=key)
    flower = {"krum": flwr_strategy.Krum, "multi-krum": flwr_strategy.MultiKrum, "bulyan": flwr_strategy.Bulyan}[name](
        num_malicious_nodes=1
    )
    flowers_varied, _ = flower.aggregate_train(1, make_replies(varied))
    flowers_equal, _ = flower.aggregate_train(1, make_replies(equal))
    assert not np.array_equal(flat(as_numpy(flowers_varied)), flat(as_numpy(flowers_equal)))


@pytest.mark.parametrize("num_clients", [7, 8])
def test_bulyan_window_holds_the_values_closest_to_the_median_despite_ties(num_clients):
    """Small integers tie a lot: the chosen window's distances are the smallest ones (Flower's argpartition set)."""
    values = np.sort(np.random.default_rng(num_clients).integers(-3, 4, size=(500, num_clients)), axis=1)
    values = values.astype(np.float32)
    distances = np.abs(values - np.median(values, axis=1, keepdims=True))
    for count in range(1, num_clients + 1):
        start = closest_to_median_window(values, count)
        window = np.take_along_axis(distances, start[:, None] + np.arange(count), axis=1)
        np.testing.assert_array_equal(np.sort(window, axis=1), np.sort(distances, axis=1)[:, :count])


def test_krum_distances_equal_flowers_compute_distances_on_the_floating_point_arrays():
    models = wide_models(12)
    records = [to_record(model) for model in models]
    floating = [to_record({key: value for key, value in model.items() if value.dtype.kind == "f"}) for model in models]
    theirs = compute_distances(floating)  # float64: the float64 array promotes the concatenation
    ours = squared_distances(records, list(records[0].keys()))  # the differing int64 counters left out
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9 * np.abs(theirs).max())


def flowers_dp_fixed_clipping(clipping_norm: float):
    return flwr_strategy.DifferentialPrivacyServerSideFixedClipping(
        flwr_strategy.FedAvg(), noise_multiplier=0.0, clipping_norm=clipping_norm, num_sampled_clients=NUM_CLIENTS
    )


def test_dp_fixed_clipping_equals_flowers_wrapper_on_floating_point_models():
    base = {key: value for key, value in global_model().items() if key != COUNTER}
    models = [
        {key: value for key, value in model.items() if key != COUNTER}
        for model in client_models(scenario_updates("aligned"), global_model())
    ]
    ours = build("dp-fixed-clipping", {"noise-multiplier": 0.0, "clipping-norm": 0.5})
    aggregates = []
    for strategy in (ours, flowers_dp_fixed_clipping(0.5)):
        strategy.configure_train(1, to_record(base), ConfigRecord(), FakeGrid())
        replies = [
            Message(
                content=RecordDict(
                    {"arrays": to_record(model), "metrics": MetricRecord({"num-examples": 10, "partition-id": PID_OFFSET + i})}
                ),
                dst_node_id=i + 1,
                message_type=MessageType.TRAIN,
            )
            for i, model in enumerate(models)
        ]
        aggregates.append(as_numpy(strategy.aggregate_train(1, replies)[0]))
    for key in base:
        np.testing.assert_allclose(aggregates[0][key], aggregates[1][key], rtol=1e-6, err_msg=key)


def test_dp_fixed_clipping_clips_the_weights_not_batchnorm_step_counters():
    """Flower's wrapper counts the integer step counter's change in the norm; ours clips the floating update to S."""
    base = global_model()
    updates = scenario_updates("aligned")
    models = client_models(updates, base, counter_step=50)  # counters move by 10..460: far more than the weights
    clipping_norm = 0.5
    ours, _ = run_round(build("dp-fixed-clipping", {"noise-multiplier": 0.0, "clipping-norm": clipping_norm}), base, models)
    flower = flowers_dp_fixed_clipping(clipping_norm)
    flower.configure_train(1, to_record(base), ConfigRecord(), FakeGrid())
    theirs, _ = flower.aggregate_train(1, make_replies(models))

    norms = np.linalg.norm(updates, axis=1)
    weights = (10 + np.arange(NUM_CLIENTS)) / (10 + np.arange(NUM_CLIENTS)).sum()
    clipped_mean = (weights * np.minimum(1.0, clipping_norm / norms)) @ updates
    np.testing.assert_allclose(flat(as_numpy(ours)) - flat(base), clipped_mean, rtol=0, atol=1e-5)
    counters = np.array([int(model[COUNTER]) for model in models], dtype=np.float64)
    assert float(as_numpy(ours)[COUNTER]) == pytest.approx(weights @ counters)  # averaged, not clipped
    flowers_step = np.linalg.norm(flat(as_numpy(theirs)) - flat(base))
    assert flowers_step < 0.2 * np.linalg.norm(clipped_mean)  # Flower's norm is dominated by the counters


def test_dp_fixed_clipping_noise_is_seeded_and_has_flowers_std():
    base = {"w": np.zeros(20_000, dtype=np.float32)}
    local = {"w": np.full(20_000, 0.001, dtype=np.float32)}  # norm 0.14, below the clipping norm
    replies = lambda: [  # noqa: E731
        Message(
            content=RecordDict(
                {"arrays": to_record(local), "metrics": MetricRecord({"num-examples": 1, "partition-id": i})}
            ),
            dst_node_id=i + 1,
            message_type=MessageType.TRAIN,
        )
        for i in range(NUM_CLIENTS)
    ]

    def noisy(seed: int, server_round: int) -> np.ndarray:
        strategy = STRATEGIES.get("dp-fixed-clipping")(
            {"noise-multiplier": 1.0, "clipping-norm": 2.0}, num_clients_per_round=NUM_CLIENTS, seed=seed
        )
        strategy.configure_train(server_round, to_record(base), ConfigRecord(), FakeGrid())
        return strategy.aggregate_train(server_round, replies())[0]["w"].numpy()

    first = noisy(0, 1)
    assert (first - 0.001).std() == pytest.approx(1.0 * 2.0 / NUM_CLIENTS, rel=0.03)
    np.testing.assert_array_equal(first, noisy(0, 1))
    assert not np.array_equal(first, noisy(0, 2)) and not np.array_equal(first, noisy(1, 1))


def test_trimmed_mean_matches_scipy_and_median_ignores_a_far_outlier():
    base = global_model()
    updates = scenario_updates("aligned")
    updates[-1] = 1e4  # one absurd client
    models = client_models(updates, base)
    stacked = np.stack([flat(model) for model in models])
    trimmed, _ = run_round(build("trimmed-mean", {"beta": 0.2}), base, models)
    np.testing.assert_allclose(flat(as_numpy(trimmed)), scipy.stats.trim_mean(stacked, 0.2, axis=0), rtol=1e-5)
    median, _ = run_round(build("median"), base, models)
    np.testing.assert_allclose(flat(as_numpy(median)), np.median(stacked, axis=0), rtol=1e-6)
    assert np.abs(flat(as_numpy(median)) - flat(base)).max() < 2  # the outlier moved nothing far


# ---------------------------------------------------------------- detection: flagged ids match the attackers


def attacker_ids() -> list[int]:
    return [PID_OFFSET + i for i in ATTACKERS]


# Flower's Krum family measures distances between whole ArrayRecords, integer arrays included:
# the clients here advance BatchNorm's counter equally (counter_step=0), as equal partitions would.


def test_krum_selects_an_honest_client_and_flags_the_rest():
    base = global_model()
    strategy = build("krum", {"num-malicious": 3})
    arrays, _ = run_round(strategy, base, client_models(scenario_updates("aligned"), base, counter_step=0))
    (kept,) = set(range(PID_OFFSET, PID_OFFSET + NUM_CLIENTS)) - set(strategy.last_flagged)
    assert kept - PID_OFFSET < NUM_HONEST
    assert set(attacker_ids()) <= set(strategy.last_flagged)


@pytest.mark.parametrize("name", ["multi-krum", "bulyan"])
def test_multi_krum_and_bulyan_flag_the_attackers(name):
    base = global_model()
    strategy = build(name, {"num-malicious": 3} if name == "multi-krum" else {"num-malicious": 1})
    run_round(strategy, base, client_models(scenario_updates("aligned"), base, counter_step=0))
    if name == "multi-krum":  # keeps n - f = 7 clients: the honest ones
        assert strategy.last_flagged == attacker_ids()
    else:  # Bulyan's Multi-Krum step keeps n - 2f = 8: the 7 honest ones and one attacker
        assert len(strategy.last_flagged) == 2 and set(strategy.last_flagged) <= set(attacker_ids())


@pytest.mark.parametrize("name", ["flame", "freqfed", "deepsight"])
def test_clustering_defences_flag_the_separated_group(name):
    base = global_model()
    updates = scenario_updates("aligned")
    strategy = build(name, {"num-samples": 500} if name == "deepsight" else None, root_data=hooks(base, updates[0]))
    arrays, _ = run_round(strategy, base, client_models(updates, base))
    # All attackers; comparing whole models, FLAME and FreqFed's lone cluster may also leave out the
    # honest client farthest from the rest (here the honest updates differ in length: 0.62 to 0.94).
    assert set(attacker_ids()) <= set(strategy.last_flagged) and len(strategy.last_flagged) <= NUM_ATTACKERS + 1
    moved = flat(as_numpy(arrays)) - flat(base)
    honest_direction = updates[0] / np.linalg.norm(updates[0])
    # The new model moved along the honest direction only (FLAME adds tiny noise).
    assert abs(moved @ honest_direction) / np.linalg.norm(moved) > 0.999


def test_flame_through_aggregate_train_equals_the_paper_equations():
    base = global_model()
    updates = scenario_updates("aligned")
    models = client_models(updates, base)
    strategy = build("flame", {"noise-lambda": 0.0})
    arrays, _ = run_round(strategy, base, models)
    kept = [i for i in range(NUM_CLIENTS) if PID_OFFSET + i not in strategy.last_flagged]
    assert kept and not set(kept) & set(ATTACKERS)
    applied = np.stack([flat(model) for model in models]) - flat(base)  # the float32 updates the server sees
    norms = np.linalg.norm(applied, axis=1)
    clipped = applied[kept] * np.minimum(1, np.median(norms) / norms[kept])[:, None]
    np.testing.assert_allclose(flat(as_numpy(arrays)), flat(base) + clipped.mean(axis=0), atol=1e-5)
    # The integer counter moves by the median of the accepted clients' counter steps, rounded.
    expected_counter = int(np.rint(np.median([int(models[i][COUNTER]) for i in kept])))
    assert as_numpy(arrays)[COUNTER].dtype == np.int64 and int(as_numpy(arrays)[COUNTER]) == expected_counter


def test_foolsgold_down_weights_identical_sybils():
    base = global_model()
    strategy = build("foolsgold")
    run_round(strategy, base, client_models(scenario_updates("diverse"), base))
    assert strategy.last_flagged == attacker_ids()
    assert all(strategy.last_weights[pid] == 0 for pid in attacker_ids())
    assert all(strategy.last_weights[PID_OFFSET + i] > 0 for i in range(NUM_HONEST))


def test_fltrust_uses_the_root_update_and_flags_opposed_clients():
    base = global_model()
    updates = scenario_updates("aligned")
    updates[ATTACKERS] = -updates[0]  # the attackers push against the root direction
    strategy = build("fltrust", root_data=hooks(base, updates[0]))
    arrays, _ = run_round(strategy, base, client_models(updates, base))
    assert strategy.last_flagged == attacker_ids()
    moved = flat(as_numpy(arrays)) - flat(base)
    # Every honest update points along the root update and is rescaled to its norm.
    np.testing.assert_allclose(moved, updates[0], rtol=1e-4, atol=1e-6)


def test_norm_clipping_bounds_the_aggregate_and_rlr_flips_disputed_coordinates():
    base = global_model()
    models = client_models(scenario_updates("aligned") * 10, base)
    arrays, _ = run_round(build("norm-clipping", {"norm-bound": 0.5}), base, models)
    assert np.linalg.norm(flat(as_numpy(arrays)) - flat(base)) <= 0.5 + 1e-5
    updates = scenario_updates("aligned")
    rlr = build("rlr", {"threshold": 8})
    arrays, _ = run_round(rlr, base, client_models(updates, base))
    moved = flat(as_numpy(arrays)) - flat(base)
    agreement = np.abs(np.sign(updates).sum(axis=0))
    weights = np.arange(10, 10 + NUM_CLIENTS) / np.arange(10, 10 + NUM_CLIENTS).sum()
    np.testing.assert_allclose(moved, np.where(agreement >= 8, 1, -1) * (weights @ updates), atol=1e-5)
    assert rlr.last_flipped_fraction == pytest.approx(np.mean(agreement < 8))
    assert rlr.last_flagged == []


def test_centered_clipping_remembers_the_previous_aggregate():
    base = global_model()
    updates = scenario_updates("aligned")
    strategy = build("centered-clipping", {"tau": 0.2})
    first, _ = run_round(strategy, base, client_models(updates, base))
    moved = flat(as_numpy(first)) - flat(base)
    assert np.linalg.norm(moved) <= 0.2 + 1e-5
    second, _ = run_round(strategy, base, client_models(updates, base), server_round=2)
    # Round 2 starts from round 1's aggregate, so it moves further towards the updates.
    assert np.linalg.norm(flat(as_numpy(second)) - flat(base)) > np.linalg.norm(moved)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_a_defence_restored_from_its_checkpointed_state_aggregates_as_an_uninterrupted_one(name, tmp_path):
    """A resumed run rebuilds the strategy; what it carries between rounds (FoolsGold's update
    histories, centered clipping's last aggregate) comes back from checkpoint.pt."""
    base = global_model()
    params = CHECKPOINT_PARAMS.get(name, ATTACKER_PARAMS.get(name))
    # Round 1: identical sybils; round 2: small unrelated updates, so FoolsGold's verdict in
    # round 2 rests on the history of round 1.
    first = scenario_updates("diverse", seed=1)
    second = 0.1 * np.random.default_rng(2).standard_normal(first.shape)
    rounds = [client_models(first, base), client_models(second, base)]

    def fresh():
        return build_for_checks(name, params, root_data=hooks(base, first[0]))

    uninterrupted = fresh()
    run_round(uninterrupted, base, rounds[0])
    expected, _ = run_round(uninterrupted, base, rounds[1], server_round=2)

    interrupted = fresh()
    run_round(interrupted, base, rounds[0])
    torch.save({"strategy": interrupted.state_dict()}, tmp_path / "checkpoint.pt")
    resumed = fresh()
    resumed.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["strategy"])
    got, _ = run_round(resumed, base, rounds[1], server_round=2)
    for key, array in as_numpy(expected).items():
        np.testing.assert_array_equal(as_numpy(got)[key], array, err_msg=key)
    assert resumed.last_weights == uninterrupted.last_weights and resumed.last_flagged == uninterrupted.last_flagged
    assert (name in STATEFUL) == bool(interrupted.state_dict()), "STATEFUL (tests/test_strategies.py) lists the rules with a state_dict"


# ---------------------------------------------------------------- parameter validation names the key


@pytest.mark.parametrize(
    ("name", "params", "clients", "key"),
    [
        ("krum", {"num-malicious": 4}, 10, "strategy.krum.num-malicious"),
        ("multi-krum", {"num-selected": 11}, 10, "strategy.multi-krum.num-selected"),
        ("bulyan", {"num-malicious": 2}, 10, "strategy.bulyan.num-malicious"),
        ("trimmed-mean", {"beta": 0.5}, 10, "strategy.trimmed-mean.beta"),
        ("trimmed-mean", {"beta": 0.05}, 10, "strategy.trimmed-mean.beta"),
        ("rlr", {"threshold": 11}, 10, "strategy.rlr.threshold"),
        ("flame", {"noise-lambda": -1}, 10, "strategy.flame.noise-lambda"),
        ("norm-clipping", {"norm-bund": 1}, 10, "strategy.norm-clipping.norm-bund"),
        ("deepsight", {"tau": 0}, 10, "strategy.deepsight.tau"),
    ],
)
def test_inconsistent_params_raise_naming_the_key(name, params, clients, key):
    cls = STRATEGIES.get(name)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        cls.validate_params(params, clients)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        cls(params, num_clients_per_round=clients, seed=0)


def test_valid_params_parse_with_aliases_and_paper_defaults():
    assert STRATEGIES.get("krum").validate_params({"num-malicious": 3}, 10).num_malicious == 3
    assert STRATEGIES.get("bulyan").validate_params(None, 7).num_malicious == 1
    assert STRATEGIES.get("flame").Params().noise_lambda == 0.001
    assert STRATEGIES.get("deepsight").Params().tau == pytest.approx(1 / 3)
    assert STRATEGIES.get("rfa").Params().smoothing == 1e-6


def test_fltrust_without_root_data_names_what_it_needs():
    with pytest.raises(ValueError, match="root_update"):
        build("fltrust")


# ---------------------------------------------------------------- sanitising replies


def test_sanitize_drops_malformed_replies_with_reasons():
    base = global_model()
    good = client_models(scenario_updates("aligned"), base)
    nan = {**good[1], "out.bias": np.array([np.nan, 0, 0, 0], dtype=np.float32)}
    wrong_shape = {**good[2], "out.bias": np.zeros(5, dtype=np.float32)}
    wrong_dtype = {**good[3], "out.bias": np.zeros(4, dtype=np.float64)}
    no_pid = make_reply(good[4], 4)
    no_pid.content["metrics"] = MetricRecord({"num-examples": 10})
    failed = Message(Error(code=0, reason="boom"), reply_to=make_reply(good[5], 5))
    replies = [
        make_reply(good[0], 0),
        make_reply(nan, 1),
        make_reply(wrong_shape, 2),
        make_reply(wrong_dtype, 3),
        no_pid,
        failed,
        make_reply(good[6], 0),  # duplicate partition id
        make_reply(good[7], 7, num_examples=0),
        make_reply(good[8], 8),
    ]
    kept, dropped = sanitize_replies(replies, to_record(base))
    assert [reply.content["metrics"]["partition-id"] for reply in kept] == [0, 8]
    reasons = [(d.partition_id, d.reason) for d in dropped]
    assert reasons[0] == (1, "array 'out.bias' has NaN or Inf values")
    assert "shape (5,)" in reasons[1][1] and "dtype float64" in reasons[2][1]
    assert reasons[3] == (None, "metric 'partition-id' missing or not an integer")
    assert reasons[4] == (None, "client error: boom")
    assert reasons[5] == (0, "duplicate partition-id 0")
    assert reasons[6][0] == 7 and "num-examples" in reasons[6][1]
