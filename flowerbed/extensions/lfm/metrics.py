"""Two-sample distances between generated samples and held-out data (lower is better).

- Energy distance (Szekely & Rizzo 2013): 2 E|X-Y| - E|X-X'| - E|Y-Y'| (within-sample terms
  without the diagonal, i.e. unbiased U-statistics).
- MMD^2 with an RBF kernel whose bandwidth is the median pairwise distance of the pooled
  sample (Gretton et al. 2012, unbiased estimator).
- Sliced 2-Wasserstein distance (Bonneel et al. 2015): the 1-D W2 between projections on
  random unit directions, averaged in square, from matched quantiles (so sample sizes may differ).
All are vectorised over samples and projections.
"""

from __future__ import annotations

import torch


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need two (n, d) samples of one dimension, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("each sample needs at least 2 points")


def _off_diagonal_mean(matrix: torch.Tensor) -> torch.Tensor:
    n = matrix.shape[0]
    return (matrix.sum() - matrix.diagonal().sum()) / (n * (n - 1))


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared energy distance between samples ``x`` (n, d) and ``y`` (m, d)."""
    _check_pair(x, y)
    x, y = x.double(), y.double()
    cross = torch.cdist(x, y).mean()
    return 2.0 * cross - _off_diagonal_mean(torch.cdist(x, x)) - _off_diagonal_mean(torch.cdist(y, y))


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    """Unbiased MMD^2 with k(a, b) = exp(-|a-b|^2 / (2 sigma^2)); sigma = median pooled distance by default."""
    _check_pair(x, y)
    x, y = x.double(), y.double()
    pooled = torch.cat([x, y])
    squared = torch.cdist(pooled, pooled).square()
    if bandwidth is None:
        n = len(pooled)
        upper = squared[torch.triu_indices(n, n, offset=1, device=pooled.device).unbind()]
        sigma_squared = upper.sqrt().median().square().clamp_min(1e-12)
    else:
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
        sigma_squared = torch.tensor(bandwidth, dtype=torch.float64) ** 2
    kernel = torch.exp(-squared / (2.0 * sigma_squared))
    n = len(x)
    return _off_diagonal_mean(kernel[:n, :n]) + _off_diagonal_mean(kernel[n:, n:]) - 2.0 * kernel[:n, n:].mean()


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, num_projections: int = 128, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sliced 2-Wasserstein distance over ``num_projections`` random directions (seed with ``generator``)."""
    _check_pair(x, y)
    if num_projections < 1:
        raise ValueError(f"num_projections must be >= 1, got {num_projections}")
    x, y = x.double(), y.double()
    directions = torch.randn((x.shape[1], num_projections), generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    levels = (torch.arange(min(len(x), len(y)), dtype=torch.float64) + 0.5) / min(len(x), len(y))
    x_quantiles = torch.quantile(x @ directions, levels, dim=0)
    y_quantiles = torch.quantile(y @ directions, levels, dim=0)
    return (x_quantiles - y_quantiles).square().mean().sqrt()
