"""The image-classification workload's model and the server hooks model-aware defences use."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord

from flowerbed.platform.config import ConfigError, parse_run_config
from flowerbed.platform.run_parts import build_strategy
from flowerbed.platform.workload import TrainContext, Workload
from flowerbed.workloads.image_classification.workload import EVAL_BATCH, ImageClassification


def test_models_are_channels_last_with_unchanged_state_dict_shapes(small_run):
    workload = ImageClassification(parse_run_config(small_run))
    model = workload.build_model()
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convolutions)
    record = ArrayRecord(model.state_dict())  # what clients send: same shapes and values
    for key, value in record.to_torch_state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_predict_hook_answers_many_inputs_in_chunks_as_one_batch(small_run):
    workload = ImageClassification(parse_run_config(small_run))
    torch.manual_seed(0)
    model = workload.build_model().eval()
    arrays = ArrayRecord(model.state_dict())
    inputs = torch.rand((2 * EVAL_BATCH + 7, *workload.dataset.image_shape), generator=torch.Generator().manual_seed(1))
    probabilities = workload.server_model_hooks().predict(arrays, inputs)
    with torch.no_grad():
        expected = torch.softmax(model(inputs), dim=1)
    assert probabilities.shape == (len(inputs), workload.dataset.num_classes)
    torch.testing.assert_close(probabilities, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(len(inputs)))


def test_root_update_takes_as_many_sgd_steps_as_an_average_client(small_run, monkeypatch):
    """FLTrust's server trains with the clients' local training (Cao et al. 2021, Alg. 1), not 4 steps on 100 images."""
    workload = ImageClassification(parse_run_config(small_run))
    steps = []
    original_step = torch.optim.SGD.step

    def counting_step(self, *args, **kwargs):
        steps.append(1)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counting_step)
    model = workload.build_model()
    workload.server_model_hooks().root_update(ArrayRecord(model.state_dict()), 1)
    root_steps = len(steps)
    steps.clear()
    client_data = workload.client_dataset(0, small_run["num-clients"])  # IID: every client holds 375 images
    context = TrainContext(
        server_round=1, partition_id=0, num_partitions=4, local_epochs=small_run["local-epochs"],
        lr=0.03, batch_size=32, generator=torch.Generator().manual_seed(0),
    )
    workload.train(workload.build_model(), client_data, context)
    assert len(client_data) == 375 and len(workload.root_data) == 100
    assert len(steps) == 2 * math.ceil(375 / 32) == 24
    assert root_steps == 24  # 6 epochs of 4 batches over the 100 root images


def test_fltrust_without_root_images_fails_before_round_one_naming_the_key(small_run):
    config = parse_run_config({**small_run, "strategy.name": "fltrust", "data.server-size": 0})
    with pytest.raises(ConfigError, match="data.server-size"):
        build_strategy(config, ImageClassification(config))


class _RedDetector(torch.nn.Module):
    """Predicts class 2 for an image whose top-left pixel is bright in channel 0, else its mean's class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 4)
        logits[:, 1] = 0.5
        logits[x[:, 0, 0, 0] > 0.9, 2] = 1.0
        return logits


class _CornerTrigger:
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[: len(x) // 2, 0, 0, 0] = 1.0  # only the first half of each batch: a half-working trigger
        return x


def _backdoor(target: int, source_classes=(), name="corner-0"):
    from types import SimpleNamespace

    return SimpleNamespace(name=name, trigger=_CornerTrigger(), target=target, source_classes=list(source_classes))


def test_triggered_success_counts_only_non_target_and_source_images():
    from flowerbed.workloads.image_classification.workload import triggered_success

    images = torch.zeros(8, 3, 4, 4, dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    # Target 2: six non-target images, the first three get the trigger and go to class 2.
    assert triggered_success(_RedDetector(), images, labels, _backdoor(2)) == pytest.approx(3 / 6)
    # Source class 3 only: two images, the first of them triggered.
    assert triggered_success(_RedDetector(), images, labels, _backdoor(2, [3])) == pytest.approx(1 / 2)
    # Target 1, whose "success" the model gives untriggered images too: counted, not excluded.
    assert triggered_success(_RedDetector(), images, labels, _backdoor(1)) == pytest.approx(3 / 6)
    # No image the backdoor applies to: undefined, not 0.
    assert triggered_success(_RedDetector(), images[:2], labels[:2], _backdoor(0)) is None


def test_the_local_backdoor_report_leaves_the_model_and_the_random_stream_as_they_were(small_run):
    from flowerbed.platform.client_app import local_backdoor_report
    from flowerbed.workloads.image_classification.workload import ClientImages

    workload = ImageClassification(parse_run_config(small_run))
    model = workload.build_model()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    dataset = workload.client_dataset(0, 4)
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    report = local_backdoor_report(workload, model, dataset, [_backdoor(2), _backdoor(9, [11], name="absent-1")])
    assert torch.equal(torch.rand(3), expected_next)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    # The backdoor with no source image on this client is left out rather than scored 0.
    assert list(report) == ["corner-0"] and 0.0 <= report["corner-0"] <= 1.0
    # A workload that cannot measure it (Workload's default hook) reports nothing.
    cannot_measure = _WorkloadWithoutHooks(parse_run_config(small_run))
    assert local_backdoor_report(cannot_measure, model, ClientImages(dataset.images, dataset.labels), [_backdoor(2)]) == {}


class _WorkloadWithoutHooks(Workload):
    """A workload that overrides none of the optional hooks."""

    name = "without-hooks"

    def build_model(self):
        return torch.nn.Linear(1, 1)

    def client_dataset(self, partition_id, num_partitions):
        return []

    def train(self, model, dataset, context):
        return {"train_loss": 0.0, "num-examples": 0}

    def evaluate(self, model):
        return {}


def test_optional_workload_hooks_default_to_none(small_run):
    workload = _WorkloadWithoutHooks(parse_run_config(small_run))
    assert workload.server_model_hooks() is None
    assert workload.local_backdoor_accuracy(workload.build_model(), [], _backdoor(2)) is None
    assert workload.backdoors == []
