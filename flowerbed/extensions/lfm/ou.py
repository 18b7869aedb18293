"""The Ornstein-Uhlenbeck (OU) step that each Local Flow Matching block matches.

Xu, Cheng & Xie, "Local Flow Matching Generative Models" (arXiv:2410.02548), Sec. 2:
block n carries p_{n-1} to the law of the OU process dX = -X dt + sqrt(2) dW run for
time h_n from p_{n-1}. Its exact transition is

    x_r = e^{-h} x_l + sqrt(1 - e^{-2h}) z,   z ~ N(0, I),

whose stationary law is N(0, I), so a chain of such steps walks data towards noise.
"""

from __future__ import annotations

import math

import torch


def ou_transition(x_left: torch.Tensor, step_size: float, noise: torch.Tensor) -> torch.Tensor:
    """The exact OU transition over time ``step_size`` from ``x_left`` with standard-normal ``noise``."""
    if step_size <= 0:
        raise ValueError(f"OU step size must be positive, got {step_size}")
    if noise.shape != x_left.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x shape {tuple(x_left.shape)}")
    shrink = math.exp(-step_size)
    return shrink * x_left + math.sqrt(1.0 - shrink * shrink) * noise


def geometric_step_sizes(count: int, first: float, growth: float) -> tuple[float, ...]:
    """``count`` step sizes ``first * growth**k``: small near the data, larger near the noise (paper's configs)."""
    if count < 0:
        raise ValueError(f"step-size count must be >= 0, got {count}")
    return tuple(first * growth**k for k in range(count))


def parse_step_sizes(text: str) -> tuple[float, ...]:
    """Parse a comma-separated list of positive step sizes such as ``"0.05,0.1,0.2"``."""
    pieces = [piece.strip() for piece in text.split(",") if piece.strip()]
    try:
        values = tuple(float(piece) for piece in pieces)
    except ValueError as error:
        raise ValueError(f"step sizes must be comma-separated numbers, got {text!r}") from error
    if any(not math.isfinite(value) or value <= 0 for value in values):
        raise ValueError(f"step sizes must be positive finite numbers, got {text!r}")
    return values
