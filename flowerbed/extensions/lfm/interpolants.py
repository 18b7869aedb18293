"""Interpolants I_t between a block's two ends and their time derivatives (the flow-matching targets).

A block is fitted by regressing its velocity v(I_t, t) on dI_t/dt (Xu et al., arXiv:2410.02548,
eq. for the local FM loss). Two interpolants, both with I_0 = x_l (data side) and I_1 = x_r
(noise side):

- ``linear`` (rectified flow / plain FM): I_t = (1 - t) x_l + t x_r, dI_t/dt = x_r - x_l.
- ``trig`` (stochastic interpolants, the official code's default):
  I_t = cos(pi t / 2) x_l + sin(pi t / 2) x_r,
  dI_t/dt = (pi / 2) (cos(pi t / 2) x_r - sin(pi t / 2) x_l).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

InterpolantName = Literal["linear", "trig"]
INTERPOLANTS: tuple[str, ...] = ("linear", "trig")


def interpolate(
    x_left: torch.Tensor, x_right: torch.Tensor, t: torch.Tensor, kind: InterpolantName
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(I_t, dI_t/dt)`` for a batch; ``t`` has shape (batch, 1) and broadcasts over features."""
    if kind == "linear":
        return x_left + t * (x_right - x_left), x_right - x_left
    if kind == "trig":
        angle = 0.5 * math.pi * t
        cos, sin = torch.cos(angle), torch.sin(angle)
        return cos * x_left + sin * x_right, 0.5 * math.pi * (cos * x_right - sin * x_left)
    raise ValueError(f"interpolant must be one of {INTERPOLANTS}, got {kind!r}")
