"""Multimodal classification data: named modalities of different dimensions plus labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MultimodalData:
    """N examples: one (N, d_m) float tensor per modality and (N,) int64 labels."""

    modalities: tuple[str, ...]
    features: tuple[torch.Tensor, ...]
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.modalities) != len(self.features):
            raise ValueError("one name per modality is required")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modality names must be unique, got {self.modalities}")
        for name, x in zip(self.modalities, self.features, strict=True):
            if x.dim() != 2 or x.shape[0] != self.labels.shape[0]:
                raise ValueError(
                    f"modality '{name}' has shape {tuple(x.shape)}; expected ({self.labels.shape[0]}, dim)"
                )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(int(x.shape[1]) for x in self.features)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max().item()) + 1

    def subset(self, indices: torch.Tensor) -> MultimodalData:
        return MultimodalData(self.modalities, tuple(x[indices] for x in self.features), self.labels[indices])

    def standardised_with(self, reference: MultimodalData) -> MultimodalData:
        """Scale every feature to zero mean / unit variance using ``reference``'s (training) statistics."""
        scaled = []
        for x, ref in zip(self.features, reference.features, strict=True):
            scaled.append((x - ref.mean(dim=0)) / ref.std(dim=0).clamp_min(1e-6))
        return MultimodalData(self.modalities, tuple(scaled), self.labels)


def train_test_split(data: MultimodalData, test_fraction: float, seed: int) -> tuple[MultimodalData, MultimodalData]:
    """Seeded random split; features are standardised with the training part's statistics."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    num_test = max(1, int(round(test_fraction * len(data))))
    train, test = data.subset(order[num_test:]), data.subset(order[:num_test])
    return train.standardised_with(train), test.standardised_with(train)
