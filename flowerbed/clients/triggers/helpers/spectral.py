"""Editing DCT coefficients of chosen channels: the core of frequency triggers.

FTrojan (Wang et al., ECCV 2022, arXiv:2111.10991) and DMBA (Liu et al.,
arXiv:2411.03926) both plant a trigger by changing a few DCT coefficients in
every ``bh x bw`` window of some channels and transforming back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowerbed.clients.triggers.helpers.dct import block_dct2, block_idct2


def check_positions(
    positions: Sequence[tuple[int, int]], window: tuple[int, int], *, parameter: str = "positions"
) -> None:
    """Raise ValueError (naming ``parameter``) if a position lies outside the ``bh x bw`` window."""
    bh, bw = window
    outside = [(u, v) for u, v in positions if not (0 <= u < bh and 0 <= v < bw)]
    if outside:
        raise ValueError(
            f"{parameter}: {outside} lie outside the {bh}x{bw} DCT window (valid u in [0,{bh - 1}], v in [0,{bw - 1}])"
        )


def edit_coefficients(
    images: Tensor,
    *,
    channels: Sequence[int],
    window: tuple[int, int],
    positions: Sequence[tuple[int, int]],
    value: float,
    mode: str,
) -> Tensor:
    """Add ``value`` to (``mode="add"``) or set to ``value`` (``mode="set"``) the DCT
    coefficients at ``positions`` of every window of ``channels``; return a new tensor.

    Works in float64 internally so the inverse transform is exact to rounding;
    no clamping here.
    """
    if mode not in ("add", "set"):
        raise ValueError(f"mode must be 'add' or 'set', got '{mode}'")
    channel_index = torch.as_tensor(list(channels), dtype=torch.long, device=images.device)
    u = torch.as_tensor([p[0] for p in positions], dtype=torch.long, device=images.device)
    v = torch.as_tensor([p[1] for p in positions], dtype=torch.long, device=images.device)
    coefficients = block_dct2(images.index_select(1, channel_index).double(), window)
    if mode == "add":
        coefficients[..., u, v] += value
    else:
        coefficients[..., u, v] = value
    result = images.clone()
    result[:, channel_index] = block_idct2(coefficients).to(images.dtype)
    return result
