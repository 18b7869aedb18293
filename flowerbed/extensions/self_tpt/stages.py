"""Self-TPT's stages (Zhu et al., arXiv:2408.05775) on a frozen CLIP.

1. Source training (``source_epoch``): classification on the labelled base classes, plus CPT
   over the base class names and gradient matching (method "self-tpt"), or classification alone
   (method "coop": CoOp, Zhou et al. 2022).
2. Test-time adaptation (``adapt_to_classes``): for a new class set, CPT alone over its names,
   once; no image, no label.
3. Inference: one CLIP forward per image against the adapted class features.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flowerbed.extensions.self_tpt import clip as clip_ops
from flowerbed.extensions.self_tpt.losses import classification_loss, contrastive_prompt_loss, gradient_matching_loss
from flowerbed.extensions.self_tpt.prompts import VIEWS, ClassTexts, PromptLearner


@dataclass
class SourceSettings:
    method: str  # "self-tpt" or "coop"
    cpt_weight: float
    gm_weight: float
    gm_ema: float
    temperature: float


def cpt_loss(learner: PromptLearner, clip: nn.Module, texts: ClassTexts, temperature: float) -> torch.Tensor:
    """CPT over ``texts``: the name at the end, middle and front of the context, and the
    hand-crafted prompt, each through the projection head."""
    views = [texts.features(clip, learner.context, view) for view in VIEWS] + [texts.hand_crafted_features(clip)]
    projected = F.normalize(learner.head(torch.stack(views)), dim=-1)
    return contrastive_prompt_loss(projected, temperature)


def encode_images(clip: nn.Module, images: torch.Tensor, image_size: int, batch: int = 256) -> torch.Tensor:
    """Normalised image features of uint8 images (the image encoder is frozen)."""
    with torch.no_grad():
        parts = [clip_ops.image_features(clip, clip_ops.preprocess(images[i : i + batch], image_size)) for i in range(0, len(images), batch)]
    return F.normalize(torch.cat(parts), dim=-1)


def source_epoch(
    learner: PromptLearner, clip: nn.Module, texts: ClassTexts, features: torch.Tensor, labels: torch.Tensor,
    settings: SourceSettings, optimizer: torch.optim.Optimizer, batch_size: int, generator: torch.Generator,
    logit_scale: float,
) -> dict[str, float]:
    """One pass over the client's base-class images (``labels`` index ``texts``); mean losses."""
    totals = {"cls_loss": 0.0, "cpt_loss": 0.0, "gm_loss": 0.0, "grad_cosine": 0.0}
    steps = 0
    direction = None  # the EMA of the classification gradient, for gradient matching
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        text_features = texts.features(clip, learner.context, "end")
        loss_cls = classification_loss(features[batch], text_features, labels[batch], logit_scale)
        loss = loss_cls
        if settings.method == "self-tpt":
            loss_cpt = cpt_loss(learner, clip, texts, settings.temperature)
            loss = loss + settings.cpt_weight * loss_cpt
            (grad_cls,) = torch.autograd.grad(loss_cls, learner.context, retain_graph=True)
            direction = grad_cls.detach() if direction is None else settings.gm_ema * direction + (1 - settings.gm_ema) * grad_cls.detach()
            (grad_cpt,) = torch.autograd.grad(loss_cpt, learner.context, retain_graph=True, create_graph=settings.gm_weight > 0)
            loss_gm = gradient_matching_loss(grad_cpt, direction)
            if settings.gm_weight > 0:
                loss = loss + settings.gm_weight * loss_gm
            totals["cpt_loss"] += loss_cpt.item()
            totals["gm_loss"] += loss_gm.item()
            totals["grad_cosine"] += 1.0 - loss_gm.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        totals["cls_loss"] += loss_cls.item()
        steps += 1
    return {key: value / max(steps, 1) for key, value in totals.items()}


def adapt_to_classes(
    learner: PromptLearner, clip: nn.Module, texts: ClassTexts, steps: int, lr: float, temperature: float
) -> PromptLearner:
    """Stage 2: a copy of ``learner`` tuned by CPT alone on the class names of ``texts``."""
    adapted = copy.deepcopy(learner)
    optimizer = torch.optim.SGD(adapted.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        cpt_loss(adapted, clip, texts, temperature).backward()
        optimizer.step()
    return adapted


def accuracy(features: torch.Tensor, labels: torch.Tensor, text_features: torch.Tensor) -> float:
    """Top-1 accuracy of CLIP's nearest class (``labels`` index the rows of ``text_features``)."""
    return float(((features @ text_features.T).argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def gradient_cosine(learner: PromptLearner, clip: nn.Module, texts: ClassTexts, features: torch.Tensor, labels: torch.Tensor, logit_scale: float, temperature: float) -> float:
    """cos(dL_cls/dctx, dL_cpt/dctx) on ``texts``' classes: how well CPT stands in for the labels."""
    loss_cls = classification_loss(features, texts.features(clip, learner.context, "end"), labels, logit_scale)
    (grad_cls,) = torch.autograd.grad(loss_cls, learner.context)
    (grad_cpt,) = torch.autograd.grad(cpt_loss(learner, clip, texts, temperature), learner.context)
    return float(F.cosine_similarity(grad_cls.flatten(), grad_cpt.flatten(), dim=0))
