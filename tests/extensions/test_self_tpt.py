"""Tests of the Self-TPT extension: the CLIP text path, the losses, the frozen encoders, the data split."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flowerbed.extensions.self_tpt import clip as clip_ops
from flowerbed.extensions.self_tpt.data import ALL_CLASSES, COLOURS, DIGIT_WORDS, make_images, split_classes
from flowerbed.extensions.self_tpt.losses import contrastive_prompt_loss, gradient_matching_loss
from flowerbed.extensions.self_tpt.workload import SelfTPTWorkload
from flowerbed.platform.config import ConfigError, parse_run_config
from flowerbed.platform.run_parts import build_workload
from flowerbed.platform.seeding import generator
from flowerbed.platform.workload import TrainContext

TINY = {
    "workload.name": "self-tpt", "num-clients": 1, "min-clients": 1, "fraction-train": 1.0, "lr": 0.01, "batch-size": 32,
    "workload.self-tpt.width": 32, "workload.self-tpt.layers": 1, "workload.self-tpt.embed-dim": 32,
    "workload.self-tpt.pretrain-steps": 30, "workload.self-tpt.pretrain-images": 400,
    "workload.self-tpt.train-images": 120, "workload.self-tpt.test-images": 80, "workload.self-tpt.tta-steps": 2,
}


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> SelfTPTWorkload:
    cache = tmp_path_factory.mktemp("self-tpt-cache")
    return build_workload(parse_run_config({**TINY, "data.cache-dir": str(cache)}))


def test_base_and_new_classes_share_every_word_and_images_are_deterministic():
    base, new = split_classes()
    assert len(base) == len(new) == 20 and not set(base) & set(new)
    for side in (base, new):
        assert {ALL_CLASSES[i].colour for i in side} == set(COLOURS)
        assert {DIGIT_WORDS[ALL_CLASSES[i].digit] for i in side} == set(DIGIT_WORDS)
    first, again = make_images(40, base, seed=3), make_images(40, base, seed=3)
    assert first.images.shape == (40, 3, 32, 32) and first.images.dtype == torch.uint8
    assert torch.equal(first.images, again.images) and set(first.labels.tolist()) == set(base)


def test_text_features_from_embeddings_equal_clips_own(workload):
    """The prompt path runs CLIP's own text modules: with real token embeddings it is CLIP."""
    clip, tokenizer = workload.clip, workload._clip_and_tokenizer[1]
    ids = tokenizer(["a photo of a red seven", "a blue two"])
    ours = clip_ops.text_features_from_embeddings(clip, clip_ops.word_embeddings(clip, ids), (ids == tokenizer.eot_id).int().argmax(-1))
    theirs = clip.get_text_features(input_ids=ids)
    torch.testing.assert_close(ours, getattr(theirs, "pooler_output", theirs), rtol=1e-5, atol=1e-5)


def test_contrastive_prompt_loss_against_a_hand_computed_value():
    # Two classes x two views on the unit circle: class 0 at angles 0 and 0, class 1 at 90 and 180 degrees.
    views = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [-1.0, 0.0]]])
    t = 0.5
    # Anchor (class 0, view 0): positive (0, view 1) at cos 1; negatives cos 0 and -1.
    a00 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0) + math.exp(-1 / t)))
    # Anchor (class 1, view 0) = (0, 1): its positive (-1, 0) at cos 0; others at cos 0 and 0.
    a10 = -math.log(1 / 3)
    # Anchor (class 1, view 1) = (-1, 0): positive (0, 1) at cos 0; others at cos -1, -1.
    a11 = -math.log(1 / (1 + 2 * math.exp(-1 / t)))
    expected = (2 * a00 + a10 + a11) / 4
    assert float(contrastive_prompt_loss(views, temperature=t)) == pytest.approx(expected, rel=1e-6)


def test_gradient_matching_loss_is_one_minus_cosine():
    g = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert float(gradient_matching_loss(g, 2 * g)) == pytest.approx(0.0, abs=1e-6)
    assert float(gradient_matching_loss(g, -g)) == pytest.approx(2.0, abs=1e-6)
    assert float(gradient_matching_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0]))) == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["self-tpt", "coop"])
def test_training_moves_only_the_prompt_and_the_encoders_stay_bit_identical(workload, method):
    clip_before = {key: value.clone() for key, value in workload.clip.state_dict().items()}
    workload.params = workload.params.model_copy(update={"method": method})
    learner = workload.build_model()
    assert set(learner.state_dict()) == {"context", *(f"head.{k}" for k in learner.head.state_dict())}
    before = learner.context.detach().clone()
    context = TrainContext(server_round=1, partition_id=0, num_partitions=1, local_epochs=1, lr=0.01, batch_size=32,
                           generator=generator(0, "client", 1, 0))
    metrics = workload.train(learner, workload.client_dataset(0, 1), context)
    assert not torch.equal(learner.context, before)
    assert metrics["parameters_sent"] == sum(v.numel() for v in learner.state_dict().values())
    assert all(p.grad is None and not p.requires_grad for p in workload.clip.parameters())
    assert all(torch.equal(value, clip_before[key]) for key, value in workload.clip.state_dict().items())
    if method == "self-tpt":
        assert metrics["cpt_loss"] > 0 and -1 <= metrics["grad_cosine"] <= 1
    else:
        assert metrics["cpt_loss"] == 0.0


def test_evaluation_reports_base_new_and_the_adaptation_cost(workload):
    results = workload.evaluate(workload.build_model())
    for key in ("base_acc", "new_acc", "new_acc_no_adaptation", "zero_shot_base_acc", "zero_shot_new_acc", "harmonic_mean"):
        assert 0.0 <= results[key] <= 1.0, key
    # The initial context is "a photo of a": the untrained prompt is the hand-written one.
    assert results["base_acc"] == pytest.approx(results["zero_shot_base_acc"])
    assert results["adaptation_seconds"] > 0 and -1 <= results["grad_cosine_new"] <= 1


def test_a_missing_checkpoint_is_named_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'workload.self-tpt.checkpoint': '.*nowhere' is not a CLIP checkpoint"):
        parse_run_config({**TINY, "workload.self-tpt.checkpoint": str(tmp_path / "nowhere")})
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text("{}")
    workload = build_workload(parse_run_config({**TINY, "workload.self-tpt.checkpoint": str(tmp_path / "foreign")}))
    with pytest.raises(ConfigError, match="flowerbed-vocabulary.json"):
        workload.build_model()


def test_a_saved_pretraining_loads_as_a_checkpoint(workload, tmp_path):
    from flowerbed.extensions.self_tpt.pretraining import VOCABULARY_FILE

    folder = tmp_path / "clip"
    workload.clip.save_pretrained(folder)
    (folder / VOCABULARY_FILE).write_text('{"words": %s}' % str(workload._clip_and_tokenizer[1].vocabulary).replace("'", '"'))
    loaded = build_workload(parse_run_config({**TINY, "workload.self-tpt.checkpoint": str(folder)}))
    torch.testing.assert_close(loaded.build_model().context, workload.build_model().context)
    assert F.cosine_similarity(loaded.clip.logit_scale, workload.clip.logit_scale, dim=0) == 1


def test_per_image_tpt_is_scored_when_asked_and_costs_an_optimisation_per_image(workload):
    from flowerbed.extensions.self_tpt.tpt import augmented_views, tpt_accuracy

    image = workload.test_images[1].images[0]
    views = augmented_views(image, 5, torch.Generator().manual_seed(0))
    assert views.shape == (5, *image.shape) and views.dtype == torch.uint8
    learner = workload.build_model()
    before = learner.context.detach().clone()
    _, labels = workload.test_features[1]
    result = tpt_accuracy(learner, workload.clip, workload.texts[1], workload.test_images[1].images[:4], labels[:4],
                          workload.image_size, workload.logit_scale, views=7)
    assert 0.0 <= result.accuracy <= 1.0 and result.seconds_per_image > 0 and result.backward_passes_per_image == 1
    assert torch.equal(learner.context, before)  # every image starts again from the trained prompt
    workload.params = workload.params.model_copy(update={"tpt_images": 3})
    results = workload.evaluate(learner)
    workload.params = workload.params.model_copy(update={"tpt_images": 0})
    assert {"tpt_new_acc", "tpt_seconds_per_image", "new_acc_on_tpt_images"} <= set(results)
    assert results["tpt_seconds_per_image"] > results["inference_seconds_per_image"]
