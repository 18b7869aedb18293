"""Tests of the Local Flow Matching workload (flowerbed/extensions/lfm, arXiv:2410.02548)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from flowerbed.extensions.lfm.chain import LocalFlowChain
from flowerbed.extensions.lfm.data import DATASETS, load_array_file, load_split
from flowerbed.extensions.lfm.interpolants import interpolate
from flowerbed.extensions.lfm.metrics import energy_distance, mmd_rbf, sliced_wasserstein
from flowerbed.extensions.lfm.networks import mlp_parameter_count, width_for_parameter_budget
from flowerbed.extensions.lfm.ode import integrate, integrate_with_log_det
from flowerbed.extensions.lfm.ou import ou_transition
from flowerbed.extensions.lfm.workload import LocalFlowMatchingParams, LocalFlowMatchingWorkload
from flowerbed.platform.registry import WORKLOADS
from flowerbed.platform.workload import TrainContext

TINY = {
    "dataset": "moons", "num-samples": 3000, "num-blocks": 3, "step-size-first": 0.1, "step-size-growth": 2.0,
    "hidden-width": 48, "hidden-layers": 2, "steps-per-round": 300, "ode-steps": 8,
    "distill-steps": 300, "distill-width": 48, "distill-layers": 2, "eval-samples": 800,
}


def _context(server_round: int, partition_id: int = 0, num_partitions: int = 1, seed: int = 0) -> TrainContext:
    return TrainContext(
        server_round=server_round, partition_id=partition_id, num_partitions=num_partitions, local_epochs=1,
        lr=2e-3, batch_size=256, generator=torch.Generator().manual_seed(1000 * seed + 10 * server_round + partition_id),
    )


def _train_locally(params: dict) -> tuple[LocalFlowMatchingWorkload, LocalFlowChain, list[dict]]:
    workload = LocalFlowMatchingWorkload(None, LocalFlowMatchingParams(**params))
    torch.manual_seed(0)
    model = workload.build_model()
    data = workload.client_dataset(0, 1)
    history = [workload.train(model, data, _context(r)) for r in range(1, workload.num_rounds() + 1)]
    return workload, model, history


@pytest.fixture(scope="module")
def trained():
    """One tiny local run (3 blocks: 2 OU + free, 300 steps each, with distillation), shared by tests."""
    return _train_locally(TINY)


# --- OU step and interpolants -------------------------------------------------------------------


def test_ou_transition_has_the_exact_ou_mean_and_variance():
    h, n = 0.3, 200_000
    start = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64).expand(n, 3)
    noise = torch.randn((n, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    moved = ou_transition(start, h, noise)
    variance = 1.0 - math.exp(-2.0 * h)
    standard_error = math.sqrt(variance / n)
    assert torch.allclose(moved.mean(0), math.exp(-h) * start[0], atol=5 * standard_error)
    # Sample variance of a normal has standard error variance * sqrt(2 / n).
    assert torch.allclose(moved.var(0), torch.full((3,), variance, dtype=torch.float64), atol=5 * variance * math.sqrt(2 / n))


def test_two_ou_steps_equal_one_step_of_the_summed_time():
    """OU is a semigroup: OU_{h2}(OU_{h1}(x)) has the law of OU_{h1+h2}(x) (checked on mean and variance)."""
    g = torch.Generator().manual_seed(1)
    n, x = 100_000, torch.full((100_000, 1), 3.0, dtype=torch.float64)
    two = ou_transition(ou_transition(x, 0.2, torch.randn(x.shape, generator=g, dtype=x.dtype)), 0.5,
                        torch.randn(x.shape, generator=g, dtype=x.dtype))
    assert abs(two.mean().item() - 3.0 * math.exp(-0.7)) < 5 * math.sqrt(1 / n)
    assert abs(two.var().item() - (1 - math.exp(-1.4))) < 0.02


def test_chain_pairs_ou_blocks_with_the_ou_step_and_the_free_block_with_noise():
    chain = LocalFlowChain(2, (0.1, 0.4), True, 16, 2, ode_steps=4)
    x, z = torch.randn(5, 2), torch.randn(5, 2)
    assert torch.allclose(chain.block_target(1, x, z), math.exp(-0.4) * x + math.sqrt(1 - math.exp(-0.8)) * z)
    assert torch.equal(chain.block_target(2, x, z), z)
    with pytest.raises(IndexError):
        chain.block_target(3, x, z)


@pytest.mark.parametrize("kind", ["linear", "trig"])
def test_interpolant_targets_are_the_time_derivative(kind):
    g = torch.Generator().manual_seed(2)
    left, right = torch.randn((64, 3), generator=g, dtype=torch.float64), torch.randn((64, 3), generator=g, dtype=torch.float64)
    t = torch.rand((64, 1), generator=g, dtype=torch.float64) * 0.98 + 0.01
    eps = 1e-6
    point, velocity = interpolate(left, right, t, kind)
    finite_difference = (interpolate(left, right, t + eps, kind)[0] - interpolate(left, right, t - eps, kind)[0]) / (2 * eps)
    assert torch.allclose(velocity, finite_difference, atol=1e-7)
    assert torch.allclose(interpolate(left, right, torch.zeros_like(t), kind)[0], left)
    assert torch.allclose(interpolate(left, right, torch.ones_like(t), kind)[0], right, atol=1e-12)
    with pytest.raises(ValueError, match="interpolant"):
        interpolate(left, right, t, "cubic")


# --- ODE and likelihood -------------------------------------------------------------------------


def test_rk4_solves_a_linear_ode_both_ways():
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    forward = integrate(lambda x, t: -x, x0, 0.0, 1.0, steps=10)
    assert torch.allclose(forward, x0 * math.exp(-1.0), rtol=1e-5)
    assert torch.allclose(integrate(lambda x, t: -x, forward, 1.0, 0.0, steps=10), x0, rtol=1e-5)


def test_log_det_integrates_the_exact_divergence():
    field = torch.nn.Linear(3, 3, bias=False).double()
    with torch.no_grad():
        field.weight.copy_(torch.tensor([[-0.5, 0.2, 0.0], [0.1, 0.3, 0.0], [0.0, 0.4, -1.0]], dtype=torch.float64))
    linear = lambda x, t: field(x)  # noqa: E731
    x = torch.randn(7, 3, dtype=torch.float64)
    end, log_det = integrate_with_log_det(_TimeIgnoring(field), x, steps=20)
    assert torch.allclose(log_det, torch.full((7,), -1.2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(end, x @ torch.linalg.matrix_exp(field.weight).T, atol=1e-6)
    assert torch.allclose(end, integrate(linear, x, 0.0, 1.0, steps=20))


class _TimeIgnoring(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x, t):
        return self.inner(x)


def test_chain_density_integrates_to_one_and_an_untrained_chain_is_standard_normal():
    torch.manual_seed(3)
    chain = LocalFlowChain(2, (0.2,), True, 16, 2, ode_steps=8)
    grid_axis = torch.linspace(-5, 5, 81)
    grid = torch.cartesian_prod(grid_axis, grid_axis)
    cell = (grid_axis[1] - grid_axis[0]) ** 2
    with torch.no_grad():
        untrained = chain.log_prob(grid)
    standard_normal = -0.5 * grid.square().sum(1) - math.log(2 * math.pi)
    assert torch.allclose(untrained, standard_normal, atol=1e-5)
    with torch.no_grad():
        for velocity in chain.velocities:  # non-trivial random fields
            velocity.net[-1].weight.normal_(0.0, 0.5)
        log_density = chain.log_prob(grid)
    assert not torch.allclose(log_density, standard_normal, atol=1e-2)
    assert abs(float(log_density.exp().sum() * cell) - 1.0) < 0.02


# --- Metrics, data, sizes -----------------------------------------------------------------------


def test_distances_are_near_zero_for_one_distribution_and_grow_with_a_shift():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn((800, 2), generator=g), torch.randn((800, 2), generator=g)
    shifted = b + torch.tensor([1.5, 0.0])
    assert abs(float(energy_distance(a, b))) < 0.02 < float(energy_distance(a, shifted))
    assert abs(float(mmd_rbf(a, b))) < 0.01 < float(mmd_rbf(a, shifted))
    assert float(sliced_wasserstein(a, b, generator=g)) < 0.15 < float(sliced_wasserstein(a, shifted, generator=g))


def test_sliced_wasserstein_of_a_translation_is_the_projected_shift():
    x = torch.randn(500, 1, dtype=torch.float64)
    assert float(sliced_wasserstein(x, x + 0.7)) == pytest.approx(0.7, abs=1e-9)


def test_parameter_budget_width_matches_the_chain():
    chain = LocalFlowChain(2, (0.05, 0.1, 0.2, 0.4), True, 64, 3, ode_steps=4)
    budget = chain.velocity_parameter_count()
    assert budget == 5 * mlp_parameter_count(3, 2, 64, 3)
    width = width_for_parameter_budget(3, 2, 3, budget)
    single = LocalFlowChain(2, (), True, width, 3, ode_steps=4).velocity_parameter_count()
    assert abs(single - budget) / budget < 0.01


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "file"])
def test_every_offline_dataset_loads_standardised(name):
    split = load_split(name, num_samples=400, noise=0.05, test_fraction=0.25, seed=0)
    assert split.train.dtype == torch.float32 and split.train.shape[1] == split.test.shape[1]
    assert torch.allclose(split.train.mean(0), torch.zeros(split.dim), atol=1e-4)
    spread = split.train.std(0)
    assert torch.all((spread - 1).abs() < 1e-3) or name == "digits"  # digits has constant pixels
    assert {"digits": 64, "breast-cancer": 30, "wine": 13, "diabetes": 10}.get(name, 2) == split.dim


def test_local_files_load_and_a_missing_file_names_the_key(tmp_path):
    table = np.random.RandomState(0).randn(50, 4)
    np.save(tmp_path / "table.npy", table)
    (tmp_path / "table.csv").write_text("a,b,c,d\n" + "\n".join(",".join(map(str, row)) for row in table))
    assert np.allclose(load_array_file(tmp_path / "table.npy"), table)
    assert np.allclose(load_array_file(tmp_path / "table.csv"), table)
    params = LocalFlowMatchingParams(**{"dataset": "file", "data-path": str(tmp_path / "table.csv")})
    assert LocalFlowMatchingWorkload(None, params).data.dim == 4
    with pytest.raises(FileNotFoundError, match="data-path"):
        load_array_file(tmp_path / "absent.npy")
    with pytest.raises(ValidationError, match="data-path"):
        LocalFlowMatchingParams(**{"dataset": "file", "data-path": str(tmp_path / "absent.npy")})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"num-blocks": 0}, "num-blocks"),
        ({"interpolant": "cubic"}, "interpolant"),
        ({"dataset": "mnist"}, "dataset"),
        ({"hidden-width": 0}, "hidden-width"),
        ({"rounds-per-block": 0}, "rounds-per-block"),
        ({"num-blocks": 3, "step-sizes": "0.1,0.2,0.3"}, "step-sizes"),
        ({"step-sizes": "0.1,oops,0.2,0.3"}, "step-sizes"),
        ({"step-sizes": "0.1,-0.2,0.2,0.3"}, "step-sizes"),
        ({"dataset": "file"}, "data-path"),
        ({"data-path": "/tmp/x.npy"}, "data-path"),
        ({"num-blokcs": 3}, "num-blokcs"),
    ],
)
def test_bad_params_name_the_key(overrides, key):
    with pytest.raises(ValidationError, match=key):
        LocalFlowMatchingParams(**overrides)


def test_rounds_map_evenly_onto_blocks_and_a_round_past_the_end_names_the_keys():
    workload = LocalFlowMatchingWorkload(None, LocalFlowMatchingParams(**{"num-blocks": 3, "rounds-per-block": 2}))
    assert workload.num_rounds() == 6
    assert [workload.block_for_round(r) for r in range(1, 7)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="rounds-per-block"):
        workload.block_for_round(7)


def test_registered_and_headline():
    assert WORKLOADS.get("lfm") is LocalFlowMatchingWorkload
    assert LocalFlowMatchingWorkload(None).headline_metric() == ("energy_distance", "min")


# --- Training end to end ------------------------------------------------------------------------


def test_local_training_beats_the_untrained_chain(trained):
    workload, model, history = trained
    untrained = workload.build_model()  # identity blocks: generates N(0, I)
    before, after = workload.evaluate(untrained), workload.evaluate(model)
    assert [h["block"] for h in history] == [0, 1, 2]
    assert all(h["num-examples"] == len(workload.data.train) for h in history)
    assert after["energy_distance"] < 0.5 * before["energy_distance"]
    assert after["mmd"] < 0.5 * before["mmd"]
    assert after["sliced_w"] < before["sliced_w"]
    assert after["nll"] < before["nll"] - 0.3


def test_pushed_training_data_ends_near_standard_normal(trained):
    workload, model, _ = trained
    with torch.no_grad():
        pushed = model.push_forward(workload.data.train, model.num_blocks)
    assert pushed.mean(0).abs().max() < 0.25
    assert (torch.cov(pushed.T) - torch.eye(2)).abs().max() < 0.3


def test_distilled_sampling_needs_one_call_per_block_and_is_close_to_the_ode_sampler(trained):
    workload, model, history = trained
    assert all(h["distill_loss"] < 0.02 for h in history)
    noise = torch.randn((2000, 2), generator=torch.Generator().manual_seed(5))
    calls = {"count": 0}
    hooks = [m.register_forward_hook(lambda *_: calls.__setitem__("count", calls["count"] + 1))
             for m in [*model.velocities, *model.one_step_maps]]
    with torch.no_grad():
        ode_samples = model.generate(noise)
        ode_calls, calls["count"] = calls["count"], 0
        one_step_samples = model.generate(noise, distilled=True)
        assert (ode_calls, calls["count"]) == (3 * 8 * 4, 3)  # 3 blocks x 8 RK4 steps x 4 stages vs 3
        for hook in hooks:
            hook.remove()
    assert (one_step_samples - ode_samples).square().sum(1).mean() < 0.05  # data variance per dim is 1
    metrics = workload.evaluate(model)
    assert metrics["energy_distance_distilled"] < metrics["energy_distance"] + 0.02


def test_federated_averaging_trains_one_block_per_round_phase():
    """A tiny FedAvg loop (3 IID clients, 2 rounds per block) stands in for the Flower harness."""
    params = {**TINY, "rounds-per-block": 2, "steps-per-round": 150, "distill": False}
    workload = LocalFlowMatchingWorkload(None, LocalFlowMatchingParams(**params))
    torch.manual_seed(0)
    global_model = workload.build_model()
    start = workload.evaluate(global_model)
    shares = [workload.client_dataset(k, 3) for k in range(3)]
    assert sum(len(s) for s in shares) == len(workload.data.train)
    assert len(torch.unique(torch.cat(shares), dim=0)) == len(workload.data.train)  # disjoint and covering
    for server_round in range(1, workload.num_rounds() + 1):
        block = workload.block_for_round(server_round)
        before = {k: v.clone() for k, v in global_model.state_dict().items()}
        states, weights = [], []
        for k, share in enumerate(shares):
            client = workload.build_model()
            client.load_state_dict(global_model.state_dict())
            metrics = workload.train(client, share, _context(server_round, k, 3))
            states.append(client.state_dict())
            weights.append(float(metrics["num-examples"]))
        weight = torch.tensor(weights) / sum(weights)
        global_model.load_state_dict(
            {key: torch.einsum("k,k...->...", weight, torch.stack([s[key] for s in states])) for key in before}
        )
        for key, value in global_model.state_dict().items():
            if key.startswith(f"velocities.{block}."):
                continue
            assert torch.allclose(value, before[key], atol=1e-6), (server_round, key)  # other blocks untouched
        trained_block = [global_model.state_dict()[k] - before[k] for k in before if k.startswith(f"velocities.{block}.")]
        assert max(float(change.abs().max()) for change in trained_block) > 1e-3
    end = workload.evaluate(global_model)
    assert end["energy_distance"] < 0.5 * start["energy_distance"]
    assert end["nll"] < start["nll"] - 0.3
