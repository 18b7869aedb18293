"""Plain concatenation fusion: concatenate the streams, classify with a one-hidden-layer MLP.

The simple backend GMF is paired with (Xiong et al., arXiv:2410.15475), and on
raw modality features the usual late-fusion baseline. An absent stream is
zero-filled, which is all a concatenation can do with a missing modality.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConcatFusion(nn.Module):
    """Concatenate M streams of any dimensions -> Linear -> ReLU -> Linear -> class logits."""

    def __init__(self, input_dims: Sequence[int], hidden_dim: int, num_classes: int) -> None:
        super().__init__()
        self.input_dims = tuple(int(d) for d in input_dims)
        self.classifier = nn.Sequential(
            nn.Linear(sum(self.input_dims), hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, num_classes)
        )

    def forward(self, streams: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        mask = present.to(streams[0].dtype)
        joined = torch.cat([x * mask[:, i : i + 1] for i, x in enumerate(streams)], dim=-1)
        return self.classifier(joined)
