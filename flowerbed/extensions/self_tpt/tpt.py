"""Per-image test-time prompt tuning (TPT; Shu et al., "Test-Time Prompt Tuning for Zero-Shot
Generalization in Vision-Language Models", NeurIPS 2022): the baseline Self-TPT is faster than.

For every test image: augmented views, keep the most confident share, one AdamW step on the
context minimising the entropy of their mean prediction, classify the image with that context,
then reset. TPT's code uses 63 views + the image, keeps 10%, one step at lr 5e-3; the view count
here is smaller (CPU), the rest as there.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flowerbed.extensions.self_tpt import clip as clip_ops
from flowerbed.extensions.self_tpt.losses import entropy_of_mean
from flowerbed.extensions.self_tpt.prompts import ClassTexts, PromptLearner


@dataclass
class TPTResult:
    accuracy: float
    seconds_per_image: float
    forward_passes_per_image: int  # image-encoder passes (views + the image) and text-encoder passes
    backward_passes_per_image: int


def augmented_views(image: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random resized crops (scale 0.5-1) with horizontal flips of one uint8 image [3, H, W]."""
    _, height, width = image.shape
    views = []
    for _ in range(count):
        scale = 0.5 + 0.5 * float(torch.rand((), generator=generator))
        h, w = max(1, round(height * scale**0.5)), max(1, round(width * scale**0.5))
        top = int(torch.randint(height - h + 1, (), generator=generator))
        left = int(torch.randint(width - w + 1, (), generator=generator))
        crop = image[:, top : top + h, left : left + w].float()[None]
        crop = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        views.append(crop.round().clamp(0, 255).to(torch.uint8))
    return torch.stack(views)


def tpt_accuracy(
    learner: PromptLearner, clip: nn.Module, texts: ClassTexts, images: torch.Tensor, labels: torch.Tensor,
    image_size: int, logit_scale: float, views: int = 15, keep: float = 0.1, lr: float = 5e-3, seed: int = 0,
) -> TPTResult:
    """TPT over ``images`` (uint8) with labels indexing ``texts``' classes."""
    generator = torch.Generator().manual_seed(seed)
    kept = max(1, round(keep * (views + 1)))
    correct = 0
    began = time.perf_counter()
    for image, label in zip(images, labels, strict=True):
        batch = torch.cat([image[None], augmented_views(image, views, generator)])
        with torch.no_grad():
            features = F.normalize(clip_ops.image_features(clip, clip_ops.preprocess(batch, image_size)), dim=-1)
        tuned = copy.deepcopy(learner)
        optimizer = torch.optim.AdamW([tuned.context], lr=lr)
        logits = logit_scale * features @ texts.features(clip, tuned.context).T
        confident = (-(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)).argsort()[:kept]
        optimizer.zero_grad(set_to_none=True)
        entropy_of_mean(logits[confident]).backward()
        optimizer.step()
        with torch.no_grad():
            prediction = (features[0] @ texts.features(clip, tuned.context).T).argmax()
        correct += int(prediction == label)
    seconds = (time.perf_counter() - began) / max(len(labels), 1)
    return TPTResult(correct / max(len(labels), 1), seconds, forward_passes_per_image=views + 1 + 2, backward_passes_per_image=1)
