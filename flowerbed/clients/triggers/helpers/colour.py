"""RGB <-> YCbCr ("YUV") conversion in torch, for frequency triggers.

Full-range ITU-R BT.601 YCbCr as used by JPEG (and by OpenCV's
``COLOR_RGB2YCrCb``, which FTrojan used; OpenCV orders the chroma channels
Cr, Cb, we keep the conventional order Y, Cb, Cr). Values in [0, 1]; the
chroma channels are offset by 0.5. The transform is affine, so the inverse is
exact up to floating-point rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows: Y, Cb, Cr; columns: R, G, B.
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)
_CHROMA_OFFSET = (0.0, 0.5, 0.5)


def _matrix(images: Tensor, *, inverse: bool = False) -> tuple[Tensor, Tensor]:
    matrix = torch.tensor(_RGB_TO_YCBCR, dtype=torch.float64)
    if inverse:
        matrix = torch.linalg.inv(matrix)  # inverted in float64, then cast
    offset = torch.tensor(_CHROMA_OFFSET, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return matrix.to(dtype=images.dtype, device=images.device), offset


def _check_rgb(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"colour conversion needs [B,3,H,W] RGB images, got shape {tuple(images.shape)}")


def rgb_to_ycbcr(images: Tensor) -> Tensor:
    """[B,3,H,W] RGB in [0,1] -> YCbCr (Y in [0,1], Cb/Cr centred on 0.5)."""
    _check_rgb(images)
    matrix, offset = _matrix(images)
    return torch.einsum("ij,bjhw->bihw", matrix, images) + offset


def ycbcr_to_rgb(images: Tensor) -> Tensor:
    """Exact inverse of :func:`rgb_to_ycbcr` (no clamping)."""
    _check_rgb(images)
    matrix, offset = _matrix(images, inverse=True)
    return torch.einsum("ij,bjhw->bihw", matrix, images - offset)
