"""Training one LFM block by flow matching, and distilling it into a one-step map.

Xu, Cheng & Xie (arXiv:2410.02548), Alg. 1: block n regresses v_n(I_t, t) on dI_t/dt for
pairs (x_l, x_r) with x_l from p_{n-1} (data pushed through blocks 1..n-1) and x_r the OU step
of x_l (the free block: x_r ~ N(0, I)); one random t per pair; loss = mean squared error.
Distillation (the paper leaves the method open) is endpoint regression: G_n(T_n(x_l)) ~ x_l,
so G_n replaces the inverse ODE map T_n^{-1} in the generative direction with one evaluation.
"""

from __future__ import annotations

import torch
from torch import nn

from flowerbed.extensions.lfm.chain import LocalFlowChain
from flowerbed.extensions.lfm.interpolants import InterpolantName, interpolate


def flow_matching_loss(
    velocity: nn.Module, x_left: torch.Tensor, x_right: torch.Tensor, t: torch.Tensor, interpolant: InterpolantName
) -> torch.Tensor:
    """Mean squared error between v(I_t, t) and dI_t/dt over a batch (t has shape (batch, 1))."""
    point, target = interpolate(x_left, x_right, t, interpolant)
    return (velocity(point, t) - target).square().mean()


def train_velocity_block(
    chain: LocalFlowChain,
    block: int,
    x_left: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    interpolant: InterpolantName,
) -> float:
    """Fit ``chain.velocities[block]`` on samples ``x_left`` of its left distribution; return the mean loss."""
    _check_loop(steps, batch_size, lr, len(x_left))
    velocity = chain.velocities[block]
    velocity.train()
    optimizer = torch.optim.Adam(velocity.parameters(), lr=lr)
    total = torch.zeros(())
    for _ in range(steps):
        index = torch.randint(len(x_left), (batch_size,), generator=generator)
        left = x_left[index]
        noise = torch.randn(left.shape, generator=generator, dtype=left.dtype)
        t = torch.rand((batch_size, 1), generator=generator, dtype=left.dtype)
        loss = flow_matching_loss(velocity, left, chain.block_target(block, left, noise), t, interpolant)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    velocity.eval()
    return float(total / steps)


def train_one_step_map(
    one_step_map: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> float:
    """Regress ``one_step_map(inputs) ~ targets`` (ODE endpoints); return the mean loss over the steps."""
    if inputs.shape != targets.shape:
        raise ValueError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} differ in shape")
    _check_loop(steps, batch_size, lr, len(inputs))
    one_step_map.train()
    optimizer = torch.optim.Adam(one_step_map.parameters(), lr=lr)
    total = torch.zeros(())
    for _ in range(steps):
        index = torch.randint(len(inputs), (batch_size,), generator=generator)
        loss = (one_step_map(inputs[index]) - targets[index]).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    one_step_map.eval()
    return float(total / steps)


def warm_start(chain: LocalFlowChain, block: int) -> None:
    """Initialise ``block`` (and its one-step map) from the previous block's weights (official code)."""
    if block < 1:
        raise ValueError(f"only blocks >= 1 can be warm-started, got {block}")
    chain.velocities[block].load_state_dict(chain.velocities[block - 1].state_dict())
    if chain.has_distilled_maps:
        chain.one_step_maps[block].load_state_dict(chain.one_step_maps[block - 1].state_dict())


def _check_loop(steps: int, batch_size: int, lr: float, num_samples: int) -> None:
    if steps < 1:
        raise ValueError(f"training steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if num_samples < 1:
        raise ValueError("no training samples")
