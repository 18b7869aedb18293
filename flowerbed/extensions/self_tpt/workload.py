"""Self-TPT as a flowerbed Workload: prompt learning on a frozen CLIP, trained locally (one
client) or federated (FedAvg over the prompt only), judged on base and new classes.

Zhu, Zhang, Xu, Shen, Chen, Wu & Wang, "Efficient Test-Time Prompt Tuning for Vision-Language
Models" (arXiv:2408.05775). Clients train the CoOp context vectors (and CPT's projection head)
on their base-class images: classification + CPT + gradient matching ("self-tpt") or
classification alone ("coop"). The server evaluates, every round, on held-out images of the base
classes and of the new classes (unseen colour-digit combinations): the hand-written prompt
(zero-shot), the trained prompt as it is (CoOp's protocol), and the trained prompt adapted to
the new class names by CPT once (Self-TPT's stage 2), with the seconds that adaptation costs.
The CLIP is a real ``transformers.CLIPModel``: a small one pre-trained contrastively here and
cached, or a checkpoint folder (``workload.self-tpt.checkpoint``) saved by that pre-training.
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from flowerbed.extensions.self_tpt import clip as clip_ops
from flowerbed.extensions.self_tpt.data import ALL_CLASSES, LabelledImages, make_images, split_classes
from flowerbed.extensions.self_tpt.pretraining import load_pretrained, pretrained_clip
from flowerbed.extensions.self_tpt.prompts import ClassTexts, PromptLearner, initial_context
from flowerbed.extensions.self_tpt.stages import SourceSettings, accuracy, adapt_to_classes, encode_images, gradient_cosine, source_epoch
from flowerbed.extensions.self_tpt.tpt import tpt_accuracy
from flowerbed.platform.cache import cache_dir_for
from flowerbed.platform.errors import ConfigError
from flowerbed.platform.partitioning import partition_indices
from flowerbed.platform.registry import WORKLOADS
from flowerbed.platform.workload import TrainContext, Workload, WorkloadParams


class SelfTPTParams(WorkloadParams):
    """``workload.self-tpt.*``. Unstated in the paper, chosen here (docs/extensions/self-tpt.md):
    the CPT temperature, the loss weights, the gradient EMA and the test-time schedule."""

    method: Literal["self-tpt", "coop"] = Field("self-tpt", description="source training: cls + CPT + gradient matching, or cls only (CoOp)")
    checkpoint: str = Field("", description="a local CLIP checkpoint folder saved by flowerbed's pre-training; '' = pre-train the small CLIP (cached)")
    width: int = Field(64, ge=32, le=1024, multiple_of=32, description="small CLIP: transformer width (both towers)")
    layers: int = Field(2, ge=1, le=24, description="small CLIP: transformer layers (both towers)")
    embed_dim: int = Field(64, alias="embed-dim", ge=8, le=1024, description="small CLIP: joint embedding size")
    pretrain_steps: int = Field(1500, alias="pretrain-steps", ge=1, le=1_000_000, description="contrastive pre-training steps (batch 128)")
    pretrain_images: int = Field(8000, alias="pretrain-images", ge=40, le=1_000_000, description="generated images for pre-training, all 40 classes")
    context_words: str = Field("a photo of a", alias="context-words", description="initial context: these words' embeddings (CoOp)")
    train_images: int = Field(2000, alias="train-images", ge=20, le=1_000_000, description="labelled base-class images shared by the clients")
    test_images: int = Field(1000, alias="test-images", ge=20, le=1_000_000, description="test images per side (base, new)")
    cpt_weight: float = Field(1.0, alias="cpt-weight", ge=0, le=1e3, description="lambda of the CPT loss")
    gm_weight: float = Field(1.0, alias="gm-weight", ge=0, le=1e3, description="lambda of the gradient-matching loss")
    gm_ema: float = Field(0.9, alias="gm-ema", ge=0, lt=1, description="EMA decay of the classification gradient GM matches")
    temperature: float = Field(0.07, gt=0, le=10, description="CPT's contrastive temperature")
    tta_steps: int = Field(10, alias="tta-steps", ge=0, le=10_000, description="test-time CPT steps on the new class names (once)")
    tta_lr: float = Field(0.002, alias="tta-lr", gt=0, le=10, description="SGD learning rate of the test-time CPT")
    tpt_images: int = Field(0, alias="tpt-images", ge=0, le=1_000_000, description="also score per-image TPT on this many new-class test images (0 = off: it costs an optimisation per image)")
    data_seed: int = Field(0, alias="data-seed", description="seeds the generated images and the pre-training")


@WORKLOADS.register("self-tpt")
class SelfTPTWorkload(Workload):
    """Prompt learning for a frozen CLIP; base-to-new generalisation with test-time CPT."""

    name = "self-tpt"
    Params = SelfTPTParams
    params: SelfTPTParams

    @classmethod
    def check_config(cls, config: Any, params: SelfTPTParams) -> list[str]:
        problems = []
        base, _ = split_classes()
        if config.num_clients > 1 and config.partition.name == "pathological" and config.partition.classes_per_client > len(base):
            problems.append(f"key 'partition.classes-per-client': at most {len(base)} base classes exist")
        if params.train_images < config.num_clients:
            problems.append(
                f"key 'workload.self-tpt.train-images': {params.train_images} images for num-clients ="
                f" {config.num_clients}; every client needs at least one"
            )
        if params.checkpoint and not (Path(params.checkpoint).expanduser() / "config.json").is_file():
            problems.append(f"key 'workload.self-tpt.checkpoint': {params.checkpoint!r} is not a CLIP checkpoint folder (no config.json there)")
        return problems

    # ------------------------------------------------------------------ the frozen CLIP and data
    @cached_property
    def _clip_and_tokenizer(self) -> tuple[nn.Module, clip_ops.WordTokenizer]:
        p = self.params
        if p.checkpoint:
            folder = Path(p.checkpoint).expanduser()
            if not (folder / "flowerbed-vocabulary.json").is_file():
                raise ConfigError(
                    [f"key 'workload.self-tpt.checkpoint': {p.checkpoint!r} has no flowerbed-vocabulary.json; only"
                     " checkpoints saved by flowerbed's pre-training are supported so far"]
                )
            clip, tokenizer = load_pretrained(folder)
        else:
            cache = cache_dir_for(self.config.data.cache_dir)
            clip, tokenizer = pretrained_clip(cache, p.width, p.layers, p.embed_dim, p.pretrain_steps, p.pretrain_images, p.data_seed)
        return clip_ops.freeze(clip), tokenizer

    @property
    def clip(self) -> nn.Module:
        return self._clip_and_tokenizer[0]

    @property
    def image_size(self) -> int:
        return int(self.clip.config.vision_config.image_size)

    @cached_property
    def classes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return split_classes()

    @cached_property
    def texts(self) -> tuple[ClassTexts, ClassTexts]:
        tokenizer = self._clip_and_tokenizer[1]
        return tuple(ClassTexts(tokenizer, [ALL_CLASSES[i].name for i in side]) for side in self.classes)  # type: ignore[return-value]

    @cached_property
    def train_data(self) -> LabelledImages:
        return make_images(self.params.train_images, self.classes[0], seed=self.params.data_seed + 1)

    @cached_property
    def test_images(self) -> list[LabelledImages]:
        """Held-out images of the base and of the new classes."""
        return [make_images(self.params.test_images, side, seed=self.params.data_seed + 2 + k) for k, side in enumerate(self.classes)]

    @cached_property
    def test_features(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(image features, labels indexing the side's classes) for base and new test images. The
        encoders are frozen, so each image's encoding time (inference's main cost) is measured once, here."""
        sides = []
        for data, side in zip(self.test_images, self.classes, strict=True):
            began = time.perf_counter()
            features = encode_images(self.clip, data.images, self.image_size)
            self.encode_seconds_per_image = (time.perf_counter() - began) / len(data)  # the new side's, last
            sides.append((features, _local_labels(data.labels, side)))
        return sides

    # ------------------------------------------------------------------ the Workload interface
    def build_model(self) -> PromptLearner:
        tokenizer = self._clip_and_tokenizer[1]
        context = initial_context(self.clip, tokenizer, self.params.context_words)
        return PromptLearner(context, int(self.clip.config.projection_dim))

    def client_dataset(self, partition_id: int, num_partitions: int) -> LabelledImages:
        """This client's base-class images (the run's ``partition.*`` over their labels)."""
        data = self.train_data
        if num_partitions == 1:
            return data
        parts = partition_indices(data.labels, num_partitions, self.config.partition, self.config.seed)
        return LabelledImages(data.images[torch.from_numpy(parts[partition_id])], data.labels[torch.from_numpy(parts[partition_id])])

    def train(self, model: nn.Module, dataset: LabelledImages, context: TrainContext) -> dict[str, float]:
        learner = _as_learner(model)
        p = self.params
        base_texts = self.texts[0]
        features = encode_images(self.clip, dataset.images, self.image_size)
        labels = _local_labels(dataset.labels, self.classes[0])
        settings = SourceSettings(p.method, p.cpt_weight, p.gm_weight, p.gm_ema, p.temperature)
        optimizer = torch.optim.SGD(learner.parameters(), lr=context.lr, momentum=0.9)
        learner.train()
        totals: dict[str, float] = {}
        for _ in range(context.local_epochs):
            totals = source_epoch(learner, self.clip, base_texts, features, labels, settings, optimizer,
                                  context.batch_size, context.generator, self.logit_scale)
        sent = sum(value.numel() for value in learner.state_dict().values())
        return {"train_loss": totals["cls_loss"], **totals, "num-examples": len(labels), "parameters_sent": sent}

    @property
    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.exp().clamp(max=100))

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        learner = _as_learner(model)
        learner.eval()
        p = self.params
        (base_features, base_labels), (new_features, new_labels) = self.test_features
        base_texts, new_texts = self.texts
        results: dict[str, Any] = {}
        with torch.no_grad():
            results["zero_shot_base_acc"] = accuracy(base_features, base_labels, base_texts.hand_crafted_features(self.clip))
            results["zero_shot_new_acc"] = accuracy(new_features, new_labels, new_texts.hand_crafted_features(self.clip))
            results["base_acc"] = accuracy(base_features, base_labels, base_texts.features(self.clip, learner.context))
            results["new_acc_no_adaptation"] = accuracy(new_features, new_labels, new_texts.features(self.clip, learner.context))
        began = time.perf_counter()
        adapted = adapt_to_classes(learner, self.clip, new_texts, p.tta_steps, p.tta_lr, p.temperature)
        results["adaptation_seconds"] = time.perf_counter() - began
        began = time.perf_counter()
        with torch.no_grad():
            results["new_acc"] = accuracy(new_features, new_labels, new_texts.features(self.clip, adapted.context))
        results["adapted_inference_seconds"] = time.perf_counter() - began  # features of the images are already there
        results["harmonic_mean"] = _harmonic(results["base_acc"], results["new_acc"])
        new_images = self.test_images[1]
        results["inference_seconds_per_image"] = self.encode_seconds_per_image + results["adapted_inference_seconds"] / len(new_images)
        if p.tpt_images:
            count = min(p.tpt_images, len(new_images))
            tpt = tpt_accuracy(learner, self.clip, new_texts, new_images.images[:count], new_labels[:count],
                               self.image_size, self.logit_scale, seed=p.data_seed)
            results["tpt_new_acc"] = tpt.accuracy
            results["tpt_seconds_per_image"] = tpt.seconds_per_image
            results["new_acc_on_tpt_images"] = accuracy(new_features[:count], new_labels[:count], new_texts.features(self.clip, adapted.context).detach())
        results["harmonic_mean_no_adaptation"] = _harmonic(results["base_acc"], results["new_acc_no_adaptation"])
        with torch.enable_grad():
            results["grad_cosine_new"] = gradient_cosine(learner, self.clip, new_texts, new_features, new_labels, self.logit_scale, p.temperature)
        return results

    def headline_metric(self) -> tuple[str, str]:
        return "harmonic_mean", "max"


def _harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def _local_labels(labels: torch.Tensor, side: tuple[int, ...]) -> torch.Tensor:
    """Labels indexing ALL_CLASSES -> indices into ``side``."""
    lookup = torch.full((len(ALL_CLASSES),), -1, dtype=torch.long)
    lookup[torch.tensor(side)] = torch.arange(len(side))
    return lookup[labels]


def _as_learner(model: nn.Module) -> PromptLearner:
    if not isinstance(model, PromptLearner):
        raise TypeError(f"the self-tpt workload trains a PromptLearner, got {type(model).__name__}")
    return model
