"""The image-classification workload's model and the server hooks model-aware defences use."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord

from flowerbed.platform.config import ConfigError, parse_run_config
from flowerbed.platform.image_classification import EVAL_BATCH, ImageClassification
from flowerbed.platform.server_app import build_strategy
from flowerbed.platform.workload import TrainContext


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
