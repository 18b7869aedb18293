"""The image-classification workload's model and the server hooks model-aware defences use."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

from flowerbed.platform.config import parse_run_config
from flowerbed.platform.image_classification import EVAL_BATCH, ImageClassification


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
