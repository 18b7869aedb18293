"""Tests of the GMF extension: subspace losses, shapes, missing modalities, training, FedAvg, params."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from flowerbed.extensions.gmf import (
    FUSIONS,
    GMFFrontend,
    GMFParams,
    GMFWorkload,
    build_fusion_classifier,
)
from flowerbed.extensions.gmf.cost import count_inference_flops, count_parameters
from flowerbed.extensions.gmf.data import train_test_split
from flowerbed.extensions.gmf.sources import make_synthetic
from flowerbed.platform.config import parse_run_config
from flowerbed.platform.registry import WORKLOADS
from flowerbed.platform.workload import TrainContext

DIMS = (6, 10, 4)


@pytest.fixture(scope="module")
def tiny_features() -> list[torch.Tensor]:
    data = make_synthetic(192, DIMS, num_classes=3, shared_dim=2, private_dim=2, shared_noise=0.3,
                          private_scale=1.0, seed=0)
    train, _ = train_test_split(data, test_fraction=0.25, seed=0)
    return list(train.features)


def _optimise(frontend: GMFFrontend, features: list[torch.Tensor], loss_name: str, steps: int = 100) -> None:
    present = torch.ones(features[0].shape[0], len(features), dtype=torch.bool)
    optimiser = torch.optim.Adam(frontend.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = frontend.losses(frontend(features, present), features, present)[loss_name]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def _invariant_agreement(frontend: GMFFrontend, features: list[torch.Tensor]) -> float:
    """Mean cosine between different modalities' batch-centred invariant parts of the same sample."""
    with torch.no_grad():
        invariant = frontend(features).invariant
    unit = F.normalize(invariant - invariant.mean(dim=0), dim=-1)
    similarity = torch.einsum("bic,bjc->bij", unit, unit).mean(dim=0)
    off_diagonal = ~torch.eye(len(features), dtype=torch.bool)
    return similarity[off_diagonal].mean().item()


def _specific_invariant_correlation(frontend: GMFFrontend, features: list[torch.Tensor]) -> float:
    """Largest absolute batch correlation between any specific and any invariant coordinate of a modality."""
    with torch.no_grad():
        output = frontend(features)
    largest = 0.0
    for i in range(len(features)):
        joint = torch.cat([output.specific[:, i], output.invariant[:, i]], dim=1).T
        correlation = torch.corrcoef(joint)[: frontend.specific_dim, frontend.specific_dim :]
        largest = max(largest, correlation.abs().max().item())
    return largest


def _reconstruction_error(frontend: GMFFrontend, features: list[torch.Tensor]) -> float:
    with torch.no_grad():
        output = frontend(features)
        rebuilt = frontend.reconstruct(output.specific, output.invariant)
    return sum(F.mse_loss(r, x).item() for r, x in zip(rebuilt, features)) / len(features)


def test_concentration_brings_invariant_parts_together(tiny_features):
    torch.manual_seed(0)
    frontend = GMFFrontend(DIMS, specific_dim=3, invariant_dim=3)
    before = _invariant_agreement(frontend, tiny_features)
    _optimise(frontend, tiny_features, "concentration")
    after = _invariant_agreement(frontend, tiny_features)
    assert after > before + 0.3, (before, after)


def test_decorrelation_separates_specific_from_invariant(tiny_features):
    torch.manual_seed(0)
    frontend = GMFFrontend(DIMS, specific_dim=3, invariant_dim=3)
    before = _specific_invariant_correlation(frontend, tiny_features)
    _optimise(frontend, tiny_features, "decorrelation")
    after = _specific_invariant_correlation(frontend, tiny_features)
    assert after < 0.5 * before, (before, after)


def test_reconstruction_error_drops_for_own_and_substituted_invariant(tiny_features):
    torch.manual_seed(0)
    frontend = GMFFrontend(DIMS, specific_dim=3, invariant_dim=3)
    present = torch.ones(tiny_features[0].shape[0], 3, dtype=torch.bool)
    start_loss = frontend.reconstruction_loss(frontend(tiny_features), tiny_features, present).item()
    before = _reconstruction_error(frontend, tiny_features)
    _optimise(frontend, tiny_features, "reconstruction")
    assert _reconstruction_error(frontend, tiny_features) < 0.5 * before
    # The paper's loss also rebuilds each modality from a neighbour's invariant part (cyclic substitution).
    assert frontend.reconstruction_loss(frontend(tiny_features), tiny_features, present).item() < 0.5 * start_loss


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_handles_modalities_of_different_dimensions(fusion):
    torch.manual_seed(0)
    dims = (5, 17, 3)
    model = build_fusion_classifier(fusion, dims, num_classes=4, hidden_dim=8, specific_dim=4, invariant_dim=6,
                                    attention_dim=8, attention_heads=2, attention_layers=1)
    features = [torch.randn(7, d) for d in dims]
    output = model(features)
    assert output.logits.shape == (7, 4)
    output.logits.sum().backward()
    if fusion.startswith("gmf"):
        streams = output.frontend.streams
        assert [s.shape[1] for s in streams] == [4, 4, 4, 6]
        assert output.frontend.present.shape == (7, 4)


def test_frontend_with_a_missing_modality():
    torch.manual_seed(0)
    frontend = GMFFrontend((5, 17, 3), specific_dim=4, invariant_dim=6)
    features = [torch.randn(7, d) for d in (5, 17, 3)]
    present = torch.ones(7, 3, dtype=torch.bool)
    present[:, 1] = False
    output = frontend(features, present)
    assert torch.all(output.specific[:, 1] == 0)
    assert torch.allclose(output.concentrated, output.invariant[:, [0, 2]].mean(dim=1), atol=1e-6)
    assert output.present[:, :3].equal(present) and output.present[:, 3].all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_masked_modality_cannot_change_the_prediction(fusion):
    torch.manual_seed(0)
    model = build_fusion_classifier(fusion, DIMS, num_classes=3, hidden_dim=8, specific_dim=4, invariant_dim=4,
                                    attention_dim=8, attention_heads=2, attention_layers=1).eval()
    features = [torch.randn(5, d) for d in DIMS]
    present = torch.tensor([[True, False, True]]).expand(5, 3)
    zeroed = [features[0], torch.zeros(5, DIMS[1]), features[2]]
    garbage = [features[0], 100 * torch.randn(5, DIMS[1]), features[2]]
    if fusion == "concat":  # concatenation cannot mask: it relies on the zero fill the workload applies
        garbage = zeroed
    with torch.no_grad():
        assert torch.allclose(model(zeroed, present).logits, model(garbage, present).logits, atol=1e-5)


def _small_workload(config=None, **params) -> GMFWorkload:
    base = {"num-samples": 600, "dims": "12,20,8", "num-classes": 4, "shared-dim": 4, "private-dim": 4,
            "shared-noise": 0.5, "hidden-dim": 32, "specific-dim": 8, "invariant-dim": 8, "attention-dim": 16,
            "attention-heads": 2, "attention-layers": 1}
    return GMFWorkload(config, GMFParams(**{**base, **params}))


def _context(epochs: int, seed: int = 0, partition_id: int = 0, num_partitions: int = 1) -> TrainContext:
    return TrainContext(server_round=1, partition_id=partition_id, num_partitions=num_partitions,
                        local_epochs=epochs, lr=3e-3, batch_size=32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_local_training_beats_chance_and_reports_missing_modalities(fusion):
    workload = _small_workload(fusion=fusion)
    torch.manual_seed(0)
    model = workload.build_model()
    untrained = workload.evaluate(model)["acc"]
    result = workload.train(model, workload.client_dataset(0, 1), _context(epochs=8))
    assert result["num-examples"] == len(workload.train_data) and np.isfinite(result["train_loss"])
    metrics = workload.evaluate(model)
    assert metrics["acc"] > 0.6 and metrics["acc"] > untrained + 0.2  # 4 classes: chance is 0.25
    assert {f"acc_missing_{name}" for name in ("m0", "m1", "m2")} <= metrics.keys()
    assert all(0.25 < metrics[f"acc_missing_m{i}"] <= 1.0 for i in range(3))
    assert metrics["params"] == count_parameters(model) and metrics["flops"] > 0
    if fusion.startswith("gmf"):
        assert result["train_reconstruction_loss"] > 0


def test_modality_dropout_training_runs():
    workload = _small_workload(fusion="gmf", **{"modality-dropout": 0.3})
    torch.manual_seed(0)
    model = workload.build_model()
    workload.train(model, workload.client_dataset(0, 1), _context(epochs=4))
    assert workload.evaluate(model)["acc"] > 0.5


def test_fedavg_over_three_clients_learns():
    workload = _small_workload(fusion="gmf")
    torch.manual_seed(0)
    global_model = workload.build_model()
    clients = [workload.client_dataset(i, 3) for i in range(3)]
    untrained = workload.evaluate(global_model)["acc"]
    for server_round in range(1, 5):
        states, sizes = [], []
        for client_id, data in enumerate(clients):
            local = workload.build_model()
            local.load_state_dict(global_model.state_dict())
            result = workload.train(local, data, _context(epochs=3, seed=100 * server_round + client_id,
                                                          partition_id=client_id, num_partitions=3))
            states.append(local.state_dict())
            sizes.append(result["num-examples"])
        weights = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
        averaged = {key: torch.einsum("c,c...->...", weights, torch.stack([s[key] for s in states]))
                    for key in states[0]}
        global_model.load_state_dict(averaged)
    final = workload.evaluate(global_model)["acc"]
    assert final > 0.6 and final > untrained + 0.2


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "pathological"])
def test_partitions_follow_the_run_partitioner_and_cover_the_training_set(partition):
    config = parse_run_config({"workload.name": "gmf", "num-clients": 4, "partition.name": partition,
                               "partition.alpha": 0.3, "partition.min-size": 0, "partition.classes-per-client": 2})
    workload = _small_workload(config=config)
    parts = [workload.client_dataset(i, 4) for i in range(4)]
    assert sum(len(p) for p in parts) == len(workload.train_data)
    rows = torch.cat([p.features[0] for p in parts])
    assert torch.unique(rows, dim=0).shape[0] == len(workload.train_data)
    again = workload.client_dataset(2, 4)
    assert again.labels.equal(parts[2].labels)  # seeded: same share every call
    assert workload.client_dataset(0, 1) is workload.train_data
    classes = [len(torch.unique(p.labels)) for p in parts]
    if partition == "iid":
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1 and min(classes) == 4
    if partition == "pathological":
        assert max(classes) <= 2
    with pytest.raises(ValueError, match="partition_id"):
        workload.client_dataset(4, 4)


def test_digits_views_have_three_modalities():
    workload = GMFWorkload(None, GMFParams(dataset="digits"))
    assert workload.train_data.modalities == ("image", "profiles", "lowres")
    assert workload.train_data.dims == (64, 16, 16)
    assert len(workload.train_data) + len(workload.test_data) == 1797


def test_feature_file_is_loaded(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "features.npz"
    np.savez(path, labels=rng.choice([3, 7], size=50), audio=rng.normal(size=(50, 5)), video=rng.normal(size=(50, 9)))
    workload = GMFWorkload(None, GMFParams(dataset="features", **{"data-path": str(path)}))
    assert workload.train_data.modalities == ("audio", "video") and workload.train_data.dims == (5, 9)
    assert set(workload.train_data.labels.tolist()) <= {0, 1}
    model = workload.build_model()
    assert set(workload.evaluate(model)) >= {"acc", "acc_missing_audio", "acc_missing_video"}


def test_feature_file_without_labels_names_data_path(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, audio=np.zeros((4, 2)), video=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="data-path.*labels"):
        GMFWorkload(None, GMFParams(dataset="features", **{"data-path": str(path)})).train_data


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"fusion": "tensor"}, "fusion"),
        ({"dims": "32"}, "dims"),
        ({"dims": "32,x"}, "dims"),
        ({"specific-dim": 0}, "specific-dim"),
        ({"reconstruction-weight": -1.0}, "reconstruction-weight"),
        ({"modality-dropout": 1.0}, "modality-dropout"),
        ({"attention-dim": 30, "attention-heads": 4}, "attention-dim"),
        ({"dataset": "features"}, "data-path"),
        ({"dataset": "features", "data-path": "/no/such/file.npz"}, "data-path"),
        ({"data-path": "/tmp/x.npz"}, "data-path"),
        ({"num-blocks": 3}, "num-blocks"),
    ],
)
def test_bad_params_name_the_key(params, key):
    with pytest.raises(ValidationError, match=key):
        GMFParams(**params)


def test_cost_counts_match_hand_counts():
    model = build_fusion_classifier("concat", (5, 7), num_classes=3, hidden_dim=4)
    assert count_parameters(model) == (12 * 4 + 4) + (4 * 3 + 3)
    assert count_inference_flops(model, (5, 7)) == 2 * (12 * 4 + 4 * 3)
    gmf = build_fusion_classifier("gmf", (5, 7), num_classes=3, hidden_dim=4, specific_dim=2, invariant_dim=3)
    # Inference runs the encoders and the backend on (2 + 2 + 3) streams; the decoders only train.
    assert count_inference_flops(gmf, (5, 7)) == 2 * (5 * 5 + 7 * 5) + 2 * (7 * 4 + 4 * 3)
    attention = build_fusion_classifier("attention", (5, 7), num_classes=3, attention_dim=8, attention_heads=2,
                                        attention_layers=1)
    assert count_inference_flops(attention, (5, 7)) > count_inference_flops(model, (5, 7))


def test_workload_is_registered():
    assert WORKLOADS.get("gmf") is GMFWorkload
    assert GMFWorkload(None).headline_metric() == ("acc", "max")
