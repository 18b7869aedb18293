"""Cross-modal attention fusion: a small Transformer over one token per stream.

The "heavier fusion" baseline (in the spirit of multimodal transformers such as
MulT, Tsai et al., ACL 2019): each stream is projected to a token, a learned
stream embedding marks its origin, self-attention over the tokens lets every
modality attend to every other, and the present tokens are mean-pooled into
the classifier. Absent streams are masked out of attention and pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class AttentionFusion(nn.Module):
    """Project M streams to tokens, run ``num_layers`` Transformer encoder layers, pool, classify."""

    def __init__(
        self, input_dims: Sequence[int], model_dim: int, num_heads: int, num_layers: int, num_classes: int
    ) -> None:
        super().__init__()
        if model_dim % num_heads:
            raise ValueError(f"model_dim ({model_dim}) must be divisible by num_heads ({num_heads})")
        self.input_dims = tuple(int(d) for d in input_dims)
        self.projections = nn.ModuleList(nn.Linear(d, model_dim) for d in self.input_dims)
        self.stream_embedding = nn.Parameter(torch.zeros(len(self.input_dims), model_dim))
        nn.init.normal_(self.stream_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            model_dim, num_heads, dim_feedforward=2 * model_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(model_dim)
        self.head = nn.Linear(model_dim, num_classes)

    def forward(self, streams: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack([proj(x) for proj, x in zip(self.projections, streams, strict=True)], dim=1)
        tokens = self.encoder(tokens + self.stream_embedding, src_key_padding_mask=~present)
        weights = present.to(tokens.dtype).unsqueeze(-1)
        pooled = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return self.head(self.norm(pooled))
