"""Defence cores (pure functions on an update matrix) against references written from the papers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
from flwr.app import Array, ArrayRecord

from flowerbed.strategies.anomaly_detection.foolsgold import UpdateHistory, foolsgold_aggregate, foolsgold_weights
from flowerbed.strategies.anomaly_detection.freqfed import freqfed_aggregate, low_frequency_features
from flowerbed.strategies.core.clustering import majority_cluster
from flowerbed.strategies.core.updates import (
    ArrayLayout,
    cosine_distances,
    cosine_similarity_matrix,
    distances_to,
    pairwise_sq_distances,
)
from flowerbed.strategies.hybrid.deepsight import deepsight_filter, suspicious_labels, threshold_exceedings
from flowerbed.strategies.hybrid.flame import flame_aggregate
from flowerbed.strategies.robust_aggregation.centered_clipping import centered_clipping
from flowerbed.strategies.robust_aggregation.fltrust import fltrust_aggregate
from flowerbed.strategies.robust_aggregation.norm_clipping import norm_clipping_aggregate
from flowerbed.strategies.robust_aggregation.rfa import geometric_median
from flowerbed.strategies.robust_aggregation.rlr import rlr_aggregate

NUM_HONEST, NUM_ATTACKERS, DIM = 7, 3, 48


def two_groups(seed: int = 0, spread: float = 0.05) -> np.ndarray:
    """7 honest updates around one direction, 3 attackers around another (rows 7..9)."""
    rng = np.random.default_rng(seed)
    honest_direction, attack_direction = rng.normal(size=DIM), rng.normal(size=DIM)
    honest = honest_direction + spread * rng.normal(size=(NUM_HONEST, DIM))
    attackers = attack_direction + spread * rng.normal(size=(NUM_ATTACKERS, DIM))
    return np.vstack([honest, attackers])


def aligned_groups(seed: int = 0) -> np.ndarray:
    """Honest updates share one direction (different norms), attackers another, with a little spread.

    HDBSCAN's single-cluster rule keeps only the honest clients that persist until
    the cluster dissolves; equal directions make all of them persist.
    """
    rng = np.random.default_rng(seed)
    honest = np.linspace(0.5, 3.0, NUM_HONEST)[:, None] * rng.normal(size=DIM)
    attackers = rng.normal(size=DIM) + 0.05 * rng.normal(size=(NUM_ATTACKERS, DIM))
    return np.vstack([honest, attackers])


def tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))


ATTACKERS = list(range(NUM_HONEST, NUM_HONEST + NUM_ATTACKERS))


# ---------------------------------------------------------------- geometry helpers


def test_pairwise_distances_and_cosine_match_scipy():
    from scipy.spatial.distance import cdist

    points = two_groups()
    np.testing.assert_allclose(pairwise_sq_distances(tensor(points)).numpy(), cdist(points, points, "sqeuclidean"), atol=1e-9)
    np.testing.assert_allclose(cosine_similarity_matrix(tensor(points)).numpy(), 1 - cdist(points, points, "cosine"), atol=1e-12)
    np.testing.assert_allclose(cosine_distances(tensor(points)).numpy(), cdist(points, points, "cosine"), atol=1e-12)
    center = points.mean(axis=0)
    np.testing.assert_allclose(distances_to(tensor(points), tensor(center)).numpy(), np.linalg.norm(points - center, axis=1))


def test_model_cosine_distances_match_float64_distances_between_whole_models():
    """Local models share a global model ~40x longer than their updates: their cosine distances
    (~1e-4) come out as a float64 product of the whole models gives them, from float32 updates."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(5)
    origin = rng.normal(size=5000)
    origin *= 30.0 / np.linalg.norm(origin)
    updates = (0.7 / np.sqrt(5000)) * rng.normal(size=(10, 5000)) + 0.3 * origin / 30.0
    updates32 = torch.from_numpy(updates.astype(np.float32))
    models = updates32.double().numpy() + origin.astype(np.float32).astype(np.float64)
    reference = cdist(models, models, "cosine")
    ours = cosine_distances(updates32, torch.from_numpy(origin.astype(np.float32))).numpy()
    off_diagonal = ~np.eye(10, dtype=bool)
    assert reference[off_diagonal].max() < 1e-3  # the regime where float32 products of whole models fail
    np.testing.assert_allclose(ours[off_diagonal], reference[off_diagonal], rtol=1e-4)
    assert (np.diag(ours) == 0).all()


def boosted_along_the_benign_direction(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A global model (norm 30), 7 honest updates along one direction (norm ~0.6) and 3 attackers
    along the same direction, ten times as long (rows 7..9): as a model-replacement boost of an
    honest-looking update. Shaped (clients, 30 x 40), one weight matrix."""
    rng = np.random.default_rng(seed)
    dim = 30 * 40
    origin = rng.normal(size=dim)
    origin *= 30.0 / np.linalg.norm(origin)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    honest = 0.6 * direction + (0.3 / np.sqrt(dim)) * rng.normal(size=(NUM_HONEST, dim))
    attackers = 6.0 * direction + (0.3 / np.sqrt(dim)) * rng.normal(size=(NUM_ATTACKERS, dim))
    return origin, np.vstack([honest, attackers])


@pytest.mark.parametrize("seed", range(4))
def test_flame_and_freqfed_compare_local_models_so_a_boost_along_the_benign_direction_stands_out(seed):
    """Between updates the boosted attackers point where the honest clients do (cosine ~1) and
    stay in; between local models their length sets them apart (FLAME's Algorithm 1 compares models)."""
    origin, points = boosted_along_the_benign_direction(seed)
    updates = torch.from_numpy(points.astype(np.float32))
    global_model = torch.from_numpy(origin.astype(np.float32))
    layout = ArrayLayout.of(ArrayRecord({"w": Array(np.zeros((30, 40), dtype=np.float32))}))
    weights = torch.full((10,), 0.1)
    by_models = [
        flame_aggregate(updates.clone(), noise_lambda=0.0, global_model=global_model).accepted,
        freqfed_aggregate(updates.clone(), weights, layout, global_model=global_model).accepted,
    ]
    by_updates = [
        flame_aggregate(updates.clone(), noise_lambda=0.0).accepted,
        freqfed_aggregate(updates.clone(), weights, layout).accepted,
    ]
    for accepted in by_models:
        assert not accepted[ATTACKERS].any() and int(accepted.sum()) >= NUM_HONEST - 1
    for accepted in by_updates:
        assert accepted[ATTACKERS].all()


def test_layout_round_trip_keeps_dtypes_and_puts_weights_then_statistics_then_integers():
    record = ArrayRecord(
        {
            "a.weight": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
            "bn.running_var": Array(np.array([9.0], dtype=np.float32)),
            "bn.num_batches_tracked": Array(np.array(5, dtype=np.int64)),
            "a.bias": Array(np.array([7.0, 8.0], dtype=np.float32)),
        }
    )
    layout = ArrayLayout.of(record)
    vector = layout.flatten(record)
    assert layout.num_learned == 8 and layout.size == 10  # defences see the 8 learned weights
    assert vector.tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9, 5]
    assert [key for key, _, _ in layout.learned_segments()] == ["a.weight", "a.bias"]
    back = layout.to_arrayrecord(vector + 0.4)
    assert list(back.keys()) == list(record.keys())
    assert back["bn.num_batches_tracked"].numpy().dtype == np.int64 and int(back["bn.num_batches_tracked"].numpy()) == 5
    np.testing.assert_allclose(back["a.bias"].numpy(), [7.4, 8.4], rtol=1e-6)


# ---------------------------------------------------------------- norm clipping (Sun et al. 2019)


def test_norm_clipping_bounds_norms_and_matches_reference():
    points = two_groups() * np.linspace(0.5, 20, NUM_HONEST + NUM_ATTACKERS)[:, None]
    weights = np.linspace(1, 2, len(points))
    weights /= weights.sum()
    bound = 3.0
    norms = np.linalg.norm(points, axis=1)
    clipped = points * np.minimum(1, bound / norms)[:, None]
    assert np.linalg.norm(clipped, axis=1).max() <= bound + 1e-9
    result = norm_clipping_aggregate(tensor(points), tensor(weights), norm_bound=bound)
    np.testing.assert_allclose(result.update.numpy(), weights @ clipped, atol=1e-12)
    assert float(torch.linalg.vector_norm(result.update)) <= bound + 1e-9
    assert bool(result.accepted.all())


def test_norm_clipping_weak_dp_noise_has_the_requested_std_and_is_seeded():
    points = torch.zeros(4, 200_000)
    weights = torch.full((4,), 0.25)
    noisy = norm_clipping_aggregate(points, weights, norm_bound=1.0, noise_std=0.025, generator=torch.Generator().manual_seed(3))
    again = norm_clipping_aggregate(points, weights, norm_bound=1.0, noise_std=0.025, generator=torch.Generator().manual_seed(3))
    assert float(noisy.update.std()) == pytest.approx(0.025, rel=0.02)
    assert torch.equal(noisy.update, again.update)


# ---------------------------------------------------------------- clustering defences


def test_majority_cluster_separates_a_minority_group():
    accepted = majority_cluster(1 - cosine_similarity_matrix(tensor(aligned_groups())))
    assert accepted.tolist() == [True] * NUM_HONEST + [False] * NUM_ATTACKERS
    # With spread-out honest clients, HDBSCAN's single-cluster rule may drop the farthest honest one too.
    for seed in range(5):
        accepted = majority_cluster(1 - cosine_similarity_matrix(tensor(two_groups(seed))))
        assert not accepted[NUM_HONEST:].any() and int(accepted[:NUM_HONEST].sum()) >= NUM_HONEST - 1


def test_flame_flags_the_separated_group_and_clips_to_the_median_norm():
    points = aligned_groups()
    result = flame_aggregate(tensor(points), noise_lambda=0.0)
    assert torch.nonzero(~result.accepted).flatten().tolist() == ATTACKERS
    norms = np.linalg.norm(points, axis=1)
    bound = np.median(norms)
    honest = points[:NUM_HONEST] * np.minimum(1, bound / norms[:NUM_HONEST])[:, None]
    np.testing.assert_allclose(result.update.numpy(), honest.mean(axis=0), atol=1e-10)


def test_flame_noise_std_is_lambda_times_median_norm():
    points = torch.from_numpy(two_groups()).repeat(1, 4000)  # 192,000 coordinates
    clean = flame_aggregate(points, noise_lambda=0.0)
    noisy = flame_aggregate(points, noise_lambda=0.001, generator=torch.Generator().manual_seed(0))
    bound = float(torch.quantile(torch.linalg.vector_norm(points, dim=1), 0.5))
    assert float((noisy.update - clean.update).std()) == pytest.approx(0.001 * bound, rel=0.02)


def freqfed_reference_features(updates: np.ndarray, shapes: list[tuple[int, ...]], cutoff: float) -> np.ndarray:
    """Per layer: 2-D orthonormal DCT-II, keep (u, v) with u/P + v/Q < cutoff (written with loops)."""
    features = []
    for row in updates:
        client, offset = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            layer = row[offset : offset + size].reshape(shape[0] if len(shape) > 1 else 1, -1)
            offset += size
            coefficients = scipy.fft.dct(scipy.fft.dct(layer, axis=0, norm="ortho"), axis=1, norm="ortho")
            rows, cols = layer.shape
            client += [coefficients[u, v] for u in range(rows) for v in range(cols) if u / rows + v / cols < cutoff or u == v == 0]
        features.append(client)
    return np.array(features)


def test_freqfed_low_frequency_features_match_a_loop_reference():
    shapes = [(4, 2, 3), (4,), (3, 4)]
    record = ArrayRecord({f"layer{i}": Array(np.zeros(shape, dtype=np.float32)) for i, shape in enumerate(shapes)})
    layout = ArrayLayout.of(record)
    updates = np.random.default_rng(1).normal(size=(5, layout.size))
    ours = low_frequency_features(tensor(updates), layout, cutoff=0.5).numpy()
    np.testing.assert_allclose(ours, freqfed_reference_features(updates, shapes, 0.5), atol=1e-12)


def test_freqfed_flags_the_separated_group_and_averages_the_rest():
    points = aligned_groups()
    record = ArrayRecord({"w": Array(np.zeros((6, 8), dtype=np.float32))})
    weights = np.arange(1, 11, dtype=np.float64)
    result = freqfed_aggregate(tensor(points), tensor(weights), ArrayLayout.of(record))
    assert torch.nonzero(~result.accepted).flatten().tolist() == ATTACKERS
    kept = weights[:NUM_HONEST] / weights[:NUM_HONEST].sum()
    np.testing.assert_allclose(result.update.numpy(), kept @ points[:NUM_HONEST], atol=1e-12)


def output_layer_updates(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Honest output-layer updates spread over 10 labels; attackers' energy on label 0 (rows 7..9)."""
    rng = np.random.default_rng(seed)
    weight = 0.1 * rng.choice([-1.0, 1.0], size=(NUM_HONEST + NUM_ATTACKERS, 10, 16))
    weight += 0.01 * rng.normal(size=weight.shape)
    bias = 0.1 + 0.01 * rng.normal(size=(NUM_HONEST + NUM_ATTACKERS, 10))
    weight[NUM_HONEST:] *= 0.01
    weight[NUM_HONEST:, 0] = 0.5 + 0.01 * rng.normal(size=(NUM_ATTACKERS, 16))
    bias[NUM_HONEST:] = 0.001
    bias[NUM_HONEST:, 0] = 1.0
    return weight, bias


def test_deepsight_threshold_exceedings_match_the_paper_definition():
    weight, bias = output_layer_updates()
    neups, exceedings = threshold_exceedings(tensor(weight), tensor(bias))
    energy = np.abs(weight).sum(axis=2) + np.abs(bias)
    expected_neups = energy**2 / (energy**2).sum(axis=1, keepdims=True)
    expected_te = [(row > max(0.01, 1 / 10) * row.max()).sum() for row in expected_neups]
    np.testing.assert_allclose(neups.numpy(), expected_neups, atol=1e-12)
    assert exceedings.tolist() == expected_te
    assert torch.nonzero(suspicious_labels(exceedings)).flatten().tolist() == ATTACKERS


def test_deepsight_rejects_the_cluster_of_suspicious_models():
    weight, bias = output_layer_updates()
    neups, exceedings = threshold_exceedings(tensor(weight), tensor(bias))
    ddifs = [tensor(neups.numpy() + 0.001 * np.random.default_rng(s).normal(size=neups.shape)) for s in range(3)]
    accepted = deepsight_filter(tensor(bias), neups, suspicious_labels(exceedings), ddifs)
    assert accepted.tolist() == [True] * NUM_HONEST + [False] * NUM_ATTACKERS


def test_deepsight_accepts_a_cluster_with_few_suspicious_models():
    # One "suspicious" label inside a cluster of 7 like models stays below tau = 1/3: all 7 are kept.
    bias = tensor(np.tile(np.linspace(1, 2, 10), (7, 1)))
    neups = bias / bias.sum(dim=1, keepdim=True)
    suspicious = torch.tensor([True, False, False, False, False, False, False])
    assert deepsight_filter(bias, neups, suspicious).all()


# ---------------------------------------------------------------- FoolsGold (Fung et al. 2020)


def foolsgold_reference(histories: np.ndarray, kappa: float = 1.0) -> np.ndarray:
    """Algorithm 1 of Fung et al., written with loops."""
    n = len(histories)
    cs = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                cs[i, j] = histories[i] @ histories[j] / (np.linalg.norm(histories[i]) * np.linalg.norm(histories[j]))
    v = cs.max(axis=1)
    for i in range(n):
        for j in range(n):
            if i != j and v[j] > v[i]:
                cs[i, j] *= v[i] / v[j]
    alpha = np.clip(1 - cs.max(axis=1), 0, 1)
    alpha = alpha / alpha.max()
    alpha[alpha == 1] = 0.99
    with np.errstate(divide="ignore"):
        alpha = kappa * (np.log(alpha / (1 - alpha)) + 0.5)
    return np.clip(np.nan_to_num(alpha, neginf=0.0, posinf=1.0), 0, 1)


def test_foolsgold_weights_match_reference_and_zero_identical_sybils():
    rng = np.random.default_rng(0)
    honest = rng.normal(size=(6, DIM))
    sybils = np.tile(rng.normal(size=DIM), (3, 1))
    histories = np.vstack([honest, sybils])
    weights = foolsgold_weights(tensor(histories)).numpy()
    np.testing.assert_allclose(weights, foolsgold_reference(histories), atol=1e-9)
    assert (weights[6:] == 0).all() and (weights[:6] > 0).all()
    result = foolsgold_aggregate(tensor(histories), tensor(histories))
    assert torch.nonzero(~result.accepted).flatten().tolist() == [6, 7, 8]
    np.testing.assert_allclose(result.update.numpy(), weights @ histories / weights.sum(), atol=1e-12)


def test_foolsgold_history_accumulates_per_partition_id():
    history = UpdateHistory()
    first = history.add([3, 5], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert first.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    second = history.add([5, 9], torch.tensor([[2.0, 2.0], [4.0, 4.0]]))
    assert second.tolist() == [[2.0, 3.0], [4.0, 4.0]]


# ---------------------------------------------------------------- FLTrust (Cao et al. 2021)


def test_fltrust_matches_reference_and_flags_opposed_clients():
    rng = np.random.default_rng(2)
    root = rng.normal(size=DIM)
    honest = root + 0.5 * rng.normal(size=(6, DIM))
    opposed = -root * np.array([[1.0], [5.0]]) + 0.1 * rng.normal(size=(2, DIM))
    points = np.vstack([honest, opposed])
    cos = points @ root / (np.linalg.norm(points, axis=1) * np.linalg.norm(root))
    trust = np.maximum(cos, 0)
    expected = (trust * np.linalg.norm(root) / np.linalg.norm(points, axis=1)) @ points / trust.sum()
    result = fltrust_aggregate(tensor(points), tensor(root))
    np.testing.assert_allclose(result.update.numpy(), expected, atol=1e-12)
    assert torch.nonzero(~result.accepted).flatten().tolist() == [6, 7]
    np.testing.assert_allclose(result.weights.numpy(), trust / trust.sum(), atol=1e-12)


# ---------------------------------------------------------------- RLR (Ozdayi et al. 2021)


def test_rlr_flips_the_learning_rate_where_signs_disagree():
    points = np.array(
        [
            [1.0, 1.0, 1.0, -2.0],
            [1.0, 1.0, -1.0, -2.0],
            [1.0, -1.0, 1.0, -2.0],
            [1.0, -1.0, -1.0, -2.0],
            [1.0, 1.0, 1.0, 3.0],
        ]
    )
    weights = np.full(5, 0.2)
    result, flipped = rlr_aggregate(tensor(points), tensor(weights), threshold=4, server_lr=1.0)
    agreement = np.abs(np.sign(points).sum(axis=0))  # [5, 1, 1, 3]
    expected = np.where(agreement >= 4, 1.0, -1.0) * (weights @ points)
    np.testing.assert_allclose(result.update.numpy(), expected)
    assert flipped == pytest.approx(0.75)
    assert result.update[0] > 0 and result.update[3] > 0  # coordinate 3: mean -1 moved backwards


# ---------------------------------------------------------------- RFA (Pillutla et al. 2022)


def weiszfeld_reference(points: np.ndarray, alphas: np.ndarray, iterations: int = 2000) -> np.ndarray:
    median = alphas @ points / alphas.sum()
    for _ in range(iterations):
        betas = alphas / np.maximum(1e-12, np.linalg.norm(points - median, axis=1))
        median = betas @ points / betas.sum()
    return median


def test_rfa_geometric_median_matches_weiszfeld_and_resists_an_outlier():
    rng = np.random.default_rng(3)
    points = np.vstack([rng.normal(size=(8, 5)), 1000 * np.ones((1, 5))])
    alphas = np.arange(1.0, 10.0)
    median, betas = geometric_median(tensor(points), tensor(alphas), max_iterations=500, smoothing=1e-12, tolerance=0.0)
    np.testing.assert_allclose(median.numpy(), weiszfeld_reference(points, alphas), atol=1e-6)
    assert np.abs(median.numpy()).max() < 3  # the mean would be near 111
    objective = lambda v: alphas @ np.linalg.norm(points - v, axis=1)  # noqa: E731
    assert objective(median.numpy()) <= objective(alphas @ points / alphas.sum())
    assert betas[-1] < betas[:-1].min()


# ---------------------------------------------------------------- Centered clipping (Karimireddy et al. 2021)


def test_centered_clipping_matches_reference_iterations():
    rng = np.random.default_rng(4)
    points = np.vstack([rng.normal(size=(6, 5)), 50 + rng.normal(size=(2, 5))])
    center0 = rng.normal(size=5)
    v = center0.copy()
    for _ in range(3):
        differences = points - v
        factors = np.minimum(1, 2.0 / np.linalg.norm(differences, axis=1))
        v = v + (differences * factors[:, None]).mean(axis=0)
    ours, coefficients = centered_clipping(tensor(points), tensor(center0), tau=2.0, iterations=3)
    np.testing.assert_allclose(ours.numpy(), v, atol=1e-12)
    assert np.linalg.norm(ours.numpy()) < 10  # the two far updates moved the centre by at most 2 * tau / n each step
    assert coefficients.sum() <= 1.0 + 1e-12
