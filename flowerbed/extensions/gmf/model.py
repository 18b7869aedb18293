"""A multimodal classifier = optional GMF frontend + any stream-fusion backend.

``fusion`` names the four arms compared in the GMF paper's spirit
(Xiong et al., arXiv:2410.15475): "concat" and "attention" fuse the raw
modality features; "gmf" and "gmf+attention" put the GMF frontend in front
of the same two backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from flowerbed.extensions.gmf.attention_fusion import AttentionFusion
from flowerbed.extensions.gmf.concat_fusion import ConcatFusion
from flowerbed.extensions.gmf.frontend import GMFFrontend, GMFOutput

FUSIONS = ("gmf", "concat", "attention", "gmf+attention")


@dataclass
class FusionOutput:
    logits: torch.Tensor
    frontend: GMFOutput | None  # None without a GMF frontend


class FusionClassifier(nn.Module):
    """Run ``frontend`` (if any) on the modality features, then ``backend`` on the resulting streams."""

    def __init__(self, backend: nn.Module, frontend: GMFFrontend | None = None) -> None:
        super().__init__()
        self.frontend = frontend
        self.backend = backend

    def forward(self, features: Sequence[torch.Tensor], present: torch.Tensor | None = None) -> FusionOutput:
        if present is None:
            present = torch.ones(features[0].shape[0], len(features), dtype=torch.bool, device=features[0].device)
        if self.frontend is None:
            return FusionOutput(self.backend(features, present), None)
        encoded = self.frontend(features, present)
        return FusionOutput(self.backend(encoded.streams, encoded.present), encoded)


def build_fusion_classifier(
    fusion: str,
    input_dims: Sequence[int],
    num_classes: int,
    *,
    hidden_dim: int = 64,
    specific_dim: int = 16,
    invariant_dim: int = 16,
    attention_dim: int = 64,
    attention_heads: int = 4,
    attention_layers: int = 2,
) -> FusionClassifier:
    """Build one of :data:`FUSIONS` for modalities of dimensions ``input_dims``."""
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion '{fusion}'; choose one of {', '.join(FUSIONS)}")
    frontend = GMFFrontend(input_dims, specific_dim, invariant_dim) if fusion.startswith("gmf") else None
    stream_dims = frontend.output_dims if frontend is not None else tuple(input_dims)
    if fusion.endswith("attention"):
        backend: nn.Module = AttentionFusion(stream_dims, attention_dim, attention_heads, attention_layers, num_classes)
    else:
        backend = ConcatFusion(stream_dims, hidden_dim, num_classes)
    return FusionClassifier(backend, frontend)
