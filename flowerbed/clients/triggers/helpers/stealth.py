"""Stealth metrics of a trigger: PSNR and SSIM between clean and triggered images.

SSIM follows Wang et al., "Image quality assessment: from error visibility to
structural similarity" (IEEE TIP 2004): an 11x11 Gaussian window with sigma 1.5
(truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, population (not sample)
covariances, computed per channel over the "valid" region (no padding) and
averaged. This is what ``skimage.metrics.structural_similarity(...,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1)`` returns; the tests check the two agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(clean: Tensor, other: Tensor) -> None:
    if clean.shape != other.shape or clean.dim() != 4:
        raise ValueError(
            f"stealth metrics need two [B,C,H,W] batches of the same shape, got {tuple(clean.shape)} "
            f"and {tuple(other.shape)}"
        )


def psnr(clean: Tensor, other: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB, shape [B] (``inf`` where the images are identical)."""
    _check_pair(clean, other)
    mse = (clean.double() - other.double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_kernel(dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return kernel / kernel.sum()


def ssim(clean: Tensor, other: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image mean SSIM over channels and valid window positions, shape [B]."""
    _check_pair(clean, other)
    x, y = clean.double(), other.double()
    batch, channels, height, width = x.shape
    kernel_1d = _gaussian_kernel(x.dtype, x.device)
    size = kernel_1d.numel()
    if height < size or width < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size} pixels, got {height}x{width}")
    kernel = torch.outer(kernel_1d, kernel_1d).expand(channels, 1, size, size)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(dim=1)


def stealth_metrics(clean: Tensor, triggered: Tensor) -> dict[str, float]:
    """``{"psnr": mean dB, "ssim": mean SSIM}`` over the batch (images in [0, 1])."""
    return {
        "psnr": float(psnr(clean, triggered).mean()),
        "ssim": float(ssim(clean, triggered).mean()),
    }


__all__ = ["psnr", "ssim", "stealth_metrics"]
