"""Self-TPT's losses (Zhu et al., "Efficient Test-Time Prompt Tuning for Vision-Language Models",
arXiv:2408.05775): classification, Contrastive Prompt Tuning (CPT) and gradient matching.

What the paper leaves open and we chose (docs/extensions/self-tpt.md): CPT is a supervised
contrastive loss (Khosla et al. 2020) over all C x V view features, temperature 0.07; gradient
matching is 1 - cos between the CPT gradient and an exponential moving average of the
classification gradient with respect to the context vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Cross-entropy of CLIP's logits ``logit_scale * <v, t_c>`` (both normalised)."""
    return F.cross_entropy(logit_scale * image_features @ text_features.T, labels)


def contrastive_prompt_loss(view_features: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """CPT: ``view_features`` [V, C, D] (normalised): the V views of a class are positives of each
    other, every other class's views are negatives (supervised contrastive loss)."""
    views, classes, _ = view_features.shape
    features = view_features.reshape(views * classes, -1)
    labels = torch.arange(classes).repeat(views)
    similarity = features @ features.T / temperature
    self_mask = torch.eye(len(features), dtype=torch.bool)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    log_probability = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    return -(log_probability.masked_fill(~positives, 0.0).sum(1) / positives.sum(1)).mean()


def gradient_matching_loss(cpt_gradient: torch.Tensor, classification_direction: torch.Tensor) -> torch.Tensor:
    """``1 - cos(g_cpt, g_cls)`` over the flattened context gradient; differentiable through
    ``cpt_gradient`` (computed with ``create_graph=True``)."""
    return 1.0 - F.cosine_similarity(cpt_gradient.flatten(), classification_direction.flatten(), dim=0)


def entropy_of_mean(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean softmax over views: TPT's objective (Shu et al., NeurIPS 2022)."""
    probabilities = logits.softmax(-1).mean(0)
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum()
