"""Fixed-step Runge-Kutta 4 integration of a block's ODE dx/dt = v(x, t), with and without the
log-density change.

The official LFM code uses adaptive dopri5 (torchdiffeq); a fixed-step RK4 is cheap, exact in
its cost (4 * steps network evaluations per block) and accurate enough for small blocks.
For likelihoods the instantaneous change of variables gives, along a trajectory from t = 0 to 1,
log p_0(x_0) = log p_1(x_1) + int_0^1 div v(x_t, t) dt (Chen et al. 2018, used block by block
in Xu et al., arXiv:2410.02548). The divergence is the exact trace of the Jacobian, computed by
torch.func over the whole batch at once, so it suits low dimension only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import jacrev, vmap

VectorField = Callable[[torch.Tensor, float], torch.Tensor]


def integrate(field: VectorField, x: torch.Tensor, start: float, end: float, steps: int) -> torch.Tensor:
    """Carry ``x`` from time ``start`` to ``end`` with ``steps`` RK4 steps (``end < start`` runs backwards)."""
    if steps < 1:
        raise ValueError(f"ODE steps must be >= 1, got {steps}")
    dt = (end - start) / steps
    t = start
    for _ in range(steps):
        k1 = field(x, t)
        k2 = field(x + 0.5 * dt * k1, t + 0.5 * dt)
        k3 = field(x + 0.5 * dt * k2, t + 0.5 * dt)
        k4 = field(x + dt * k3, t + dt)
        x = x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        t = t + dt
    return x


def velocity_and_divergence(field: nn.Module, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v(x, t), div_x v(x, t))`` for a batch; the divergence is the exact Jacobian trace per sample."""

    def single(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = field(point.unsqueeze(0), t).squeeze(0)
        return out, out

    jacobians, velocities = vmap(jacrev(single, has_aux=True))(x)
    return velocities, jacobians.diagonal(dim1=-2, dim2=-1).sum(-1)


def integrate_with_log_det(field: nn.Module, x: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry ``x`` from t = 0 to 1 and return ``(x_1, int_0^1 div v dt)`` per sample (RK4 on both)."""
    if steps < 1:
        raise ValueError(f"ODE steps must be >= 1, got {steps}")
    dt = 1.0 / steps
    log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    t = 0.0
    for _ in range(steps):
        k1, d1 = velocity_and_divergence(field, x, t)
        k2, d2 = velocity_and_divergence(field, x + 0.5 * dt * k1, t + 0.5 * dt)
        k3, d3 = velocity_and_divergence(field, x + 0.5 * dt * k2, t + 0.5 * dt)
        k4, d4 = velocity_and_divergence(field, x + dt * k3, t + dt)
        x = x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        log_det = log_det + (dt / 6.0) * (d1 + 2.0 * d2 + 2.0 * d3 + d4)
        t = t + dt
    return x, log_det
