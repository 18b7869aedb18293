"""Orthonormal 2-D DCT-II as matrix products, whole-image or blockwise.

With the orthonormal basis matrix ``D`` (``D @ D.T = I``) a window ``X`` has
coefficients ``D_h @ X @ D_w.T`` and is recovered exactly by
``D_h.T @ C @ D_w``. This matches ``scipy.fft.dctn(x, norm="ortho")`` and
OpenCV's ``cv2.dct`` (what FTrojan used). Blockwise transforms split the image
into non-overlapping ``bh x bw`` windows by a reshape, so everything is
vectorised over batch, channels and blocks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def dct_matrix(n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """The n x n orthonormal DCT-II matrix: row k is frequency k, column i is sample i."""
    if n < 1:
        raise ValueError(f"DCT size must be >= 1, got {n}")
    k = torch.arange(n, dtype=dtype, device=device).unsqueeze(1)
    i = torch.arange(n, dtype=dtype, device=device).unsqueeze(0)
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n))
    scale = torch.full((n, 1), math.sqrt(2.0 / n), dtype=dtype, device=device)
    scale[0, 0] = math.sqrt(1.0 / n)
    return basis * scale


def check_window(window: tuple[int, int], height: int, width: int, *, parameter: str = "window") -> None:
    """Raise ValueError (naming ``parameter``) unless ``window`` tiles an ``height x width`` image."""
    bh, bw = window
    if bh < 1 or bw < 1 or height % bh or width % bw:
        raise ValueError(
            f"{parameter}: a {bh}x{bw} DCT window must tile the {height}x{width} image exactly"
        )


def _blocks(images: Tensor, window: tuple[int, int]) -> Tensor:
    """[B,C,H,W] -> [B,C,H/bh,bh,W/bw,bw] (a view)."""
    b, c, h, w = images.shape
    bh, bw = window
    return images.reshape(b, c, h // bh, bh, w // bw, bw)


def block_dct2(images: Tensor, window: tuple[int, int]) -> Tensor:
    """Blockwise orthonormal 2-D DCT-II.

    Returns ``[B, C, H/bh, W/bw, bh, bw]``: for every block (row, col) its
    ``bh x bw`` coefficients, index ``[..., u, v]`` = vertical frequency u,
    horizontal frequency v.
    """
    check_window(window, images.shape[-2], images.shape[-1])
    dh = dct_matrix(window[0], dtype=images.dtype, device=images.device)
    dw = dct_matrix(window[1], dtype=images.dtype, device=images.device)
    return torch.einsum("ui,bcpiqj,vj->bcpquv", dh, _blocks(images, window), dw)


def block_idct2(coefficients: Tensor) -> Tensor:
    """Inverse of :func:`block_dct2`: ``[B,C,nH,nW,bh,bw]`` -> ``[B,C,H,W]``."""
    b, c, nh, nw, bh, bw = coefficients.shape
    dh = dct_matrix(bh, dtype=coefficients.dtype, device=coefficients.device)
    dw = dct_matrix(bw, dtype=coefficients.dtype, device=coefficients.device)
    blocks = torch.einsum("ui,bcpquv,vj->bcpiqj", dh, coefficients, dw)
    return blocks.reshape(b, c, nh * bh, nw * bw)
