"""The GMF frontend: dissociation -> concentration -> reconstruction.

From "Generalized Multimodal Fusion via Poisson-Nernst-Planck Equation"
(Xiong et al., arXiv:2410.15475). Each modality's extracted feature x_i (any
dimension d_i) is *dissociated* by a small per-modality autoencoder into a
modality-specific part s_i and a modality-invariant part c_i. The invariant
parts are *concentrated*: they must be interchangeable between modalities
(each modality is rebuilt from its own s_i and the next modality's c_j, the
cyclic substitution of the paper's revised version, v2) and they are pooled
into one shared stream. *Reconstruction* of x_i from (s_i, c_i) and from
(s_i, c_j) keeps the information the task loss did not select.

The frontend turns M modality features into M + 1 streams of fixed size
(s_1 .. s_M, and the concentrated invariant c) plus a presence mask, so any
backend that fuses a list of streams (concatenation, attention, ...) can sit
behind it. Modalities need not share a dimension.

Two optional regularisers make the subspace properties explicit; they are
not part of the paper's objective (its v2 argues such auxiliary terms fight
the task loss) and are off by default: a concentration term pulling every
c_i towards their common centre, and a decorrelation term between s_i and c_i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GMFOutput:
    """What the frontend hands to a backend, plus what its losses need."""

    streams: list[torch.Tensor]  # M specific streams (B, specific_dim) and 1 invariant stream (B, invariant_dim)
    present: torch.Tensor  # (B, M + 1) bool: which streams carry information
    specific: torch.Tensor  # (B, M, specific_dim), absent modalities zeroed
    invariant: torch.Tensor  # (B, M, invariant_dim), per modality, before concentration
    concentrated: torch.Tensor  # (B, invariant_dim): mean invariant part over present modalities


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, M, ...) over M with 0/1 ``weights`` (B, M); rows without weight give 0."""
    weights = weights.to(values.dtype)
    shape = weights.shape + (1,) * (values.dim() - weights.dim())
    total = (values * weights.view(shape)).sum(dim=1)
    return total / weights.sum(dim=1).clamp_min(1.0).view(-1, *([1] * (total.dim() - 1)))


class GMFFrontend(nn.Module):
    """Dissociate each modality into specific and invariant subspaces (Xiong et al., 2024).

    Args:
        input_dims: the feature dimension of each modality (may all differ).
        specific_dim: size of each modality-specific subspace s_i.
        invariant_dim: size of the modality-invariant subspace c_i (shared by all modalities).
    """

    def __init__(self, input_dims: Sequence[int], specific_dim: int, invariant_dim: int) -> None:
        super().__init__()
        if len(input_dims) < 2:
            raise ValueError(f"GMF needs at least two modalities, got input_dims={list(input_dims)}")
        if min(input_dims) < 1 or specific_dim < 1 or invariant_dim < 1:
            raise ValueError("input_dims, specific_dim and invariant_dim must be positive")
        self.input_dims = tuple(int(d) for d in input_dims)
        self.specific_dim = specific_dim
        self.invariant_dim = invariant_dim
        code_dim = specific_dim + invariant_dim
        # Dissociation: one light linear encoder per modality, its output split in two subspaces.
        self.encoders = nn.ModuleList(nn.Linear(d, code_dim) for d in self.input_dims)
        # Reconstruction: one linear decoder per modality, used by the losses only (not at inference).
        self.decoders = nn.ModuleList(nn.Linear(code_dim, d) for d in self.input_dims)

    @property
    def num_modalities(self) -> int:
        return len(self.input_dims)

    @property
    def output_dims(self) -> tuple[int, ...]:
        """Dimensions of the streams a backend receives: M specific streams, then the invariant one."""
        return (self.specific_dim,) * self.num_modalities + (self.invariant_dim,)

    def dissociate(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Split every modality: returns specific (B, M, specific_dim) and invariant (B, M, invariant_dim)."""
        if len(features) != self.num_modalities:
            raise ValueError(f"expected {self.num_modalities} modalities, got {len(features)}")
        codes = torch.stack([encoder(x) for encoder, x in zip(self.encoders, features, strict=True)], dim=1)
        return codes.split([self.specific_dim, self.invariant_dim], dim=-1)

    def forward(self, features: Sequence[torch.Tensor], present: torch.Tensor | None = None) -> GMFOutput:
        batch = features[0].shape[0]
        if present is None:
            present = torch.ones(batch, self.num_modalities, dtype=torch.bool, device=features[0].device)
        specific, invariant = self.dissociate(features)
        specific = specific * present.unsqueeze(-1).to(specific.dtype)
        # Concentration: invariant parts of the present modalities gather into one shared stream.
        concentrated = masked_mean(invariant, present)
        streams = list(specific.unbind(dim=1)) + [concentrated]
        stream_present = torch.cat([present, present.any(dim=1, keepdim=True)], dim=1)
        return GMFOutput(streams, stream_present, specific, invariant, concentrated)

    def reconstruct(self, specific: torch.Tensor, invariant: torch.Tensor) -> list[torch.Tensor]:
        """Decode every modality from its (specific, invariant) pair: M tensors (B, d_i)."""
        codes = torch.cat([specific, invariant], dim=-1)
        return [decoder(codes[:, i]) for i, decoder in enumerate(self.decoders)]

    def reconstruction_loss(
        self, output: GMFOutput, features: Sequence[torch.Tensor], present: torch.Tensor
    ) -> torch.Tensor:
        """Self- and cross-reconstruction error (MSE per modality, averaged over present modalities).

        Cross reconstruction rebuilds modality i from s_i and the invariant part of
        modality i-1 (cyclic substitution), so c_i can only hold what the others share.
        """
        specific, invariant = output.specific, output.invariant
        substituted = invariant.roll(shifts=1, dims=1)
        cross_present = present & present.roll(shifts=1, dims=1)
        own = self.reconstruct(specific, invariant)
        crossed = self.reconstruct(specific, substituted)
        own_error = _per_modality_mse(own, features)
        cross_error = _per_modality_mse(crossed, features)
        return _weighted_mean(own_error, present) + _weighted_mean(cross_error, cross_present)

    def concentration_loss(self, output: GMFOutput, present: torch.Tensor) -> torch.Tensor:
        """Optional extra: 1 - cosine(c_i, centre) after removing batch means, over present modalities.

        Centring makes the term scale-free and stops it from being met by a constant
        (collapsed) invariant part: a constant has no direction left once centred.
        """
        weights = present.to(output.invariant.dtype).unsqueeze(-1)  # (B, M, 1)
        count = weights.sum(dim=0).clamp_min(1.0)  # (M, 1)
        invariant = output.invariant - (output.invariant * weights).sum(dim=0) / count
        any_present = present.any(dim=1, keepdim=True).to(weights.dtype)
        centre = output.concentrated - (output.concentrated * any_present).sum(dim=0) / any_present.sum().clamp_min(1.0)
        distance = 1.0 - F.cosine_similarity(invariant, centre.unsqueeze(1).expand_as(invariant), dim=-1, eps=1e-6)
        return _weighted_mean(distance, present)

    def decorrelation_loss(self, output: GMFOutput, present: torch.Tensor) -> torch.Tensor:
        """Optional extra: mean squared batch correlation between s_i and c_i, over modalities."""
        weights = present.to(output.invariant.dtype).unsqueeze(-1)  # (B, M, 1)
        count = weights.sum(dim=0).clamp_min(2.0)  # (M, 1)
        standardised = [_standardise(v, weights, count) for v in (output.specific, output.invariant)]
        correlation = torch.einsum("bms,bmc->msc", standardised[0] * weights, standardised[1]) / count.unsqueeze(-1)
        return correlation.pow(2).mean()

    def losses(
        self, output: GMFOutput, features: Sequence[torch.Tensor], present: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """All three frontend losses by name (the workload weights them)."""
        return {
            "reconstruction": self.reconstruction_loss(output, features, present),
            "concentration": self.concentration_loss(output, present),
            "decorrelation": self.decorrelation_loss(output, present),
        }


def _per_modality_mse(reconstructions: Sequence[torch.Tensor], features: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, M): mean squared error of each sample's reconstruction, per modality."""
    return torch.stack([(r - x).pow(2).mean(dim=-1) for r, x in zip(reconstructions, features, strict=True)], dim=1)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    weights = weights.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def _standardise(values: torch.Tensor, weights: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance over the batch (weighted), per modality and dimension."""
    mean = (values * weights).sum(dim=0) / count
    centred = (values - mean) * weights
    std = (centred.pow(2).sum(dim=0) / count).sqrt().clamp_min(1e-6)
    return centred / std
