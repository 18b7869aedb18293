"""The Local Flow Matching model: a chain of N small flow blocks (and their one-step distillations).

Xu, Cheng & Xie, "Local Flow Matching Generative Models" (arXiv:2410.02548). Block n is an ODE
map T_n (dx/dt = v_n(x, t), t: 0 -> 1) that carries p_{n-1} to OU_{h_n}(p_{n-1}); an optional
final "free" block carries what is left straight to N(0, I) (official code). Data goes forward
(data -> noise) through T_1..T_N; generation runs T_N^{-1}, ..., T_1^{-1} from N(0, I).

Every block lives in one ``nn.ModuleList`` so the whole chain has one ``state_dict`` that
FedAvg can average; blocks that are not trained yet are identity maps (zero last layer).
A global flow-matching model is the special case of one free block.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flowerbed.extensions.lfm.networks import OneStepMap, VelocityField
from flowerbed.extensions.lfm.ode import integrate, integrate_with_log_det
from flowerbed.extensions.lfm.ou import ou_transition


class LocalFlowChain(nn.Module):
    """N velocity blocks (OU blocks with step sizes ``step_sizes``, then an optional free block).

    Args:
        dim: data dimension d.
        step_sizes: OU time h_n of each OU block, data side first.
        free_final_block: add a last block whose right end is N(0, I) itself.
        hidden_width, hidden_layers: size of every velocity MLP.
        ode_steps: RK4 steps per block when pushing data or generating.
        distill_width, distill_layers: size of every one-step map; ``distill_width=0`` builds none.
    """

    def __init__(
        self,
        dim: int,
        step_sizes: tuple[float, ...],
        free_final_block: bool,
        hidden_width: int,
        hidden_layers: int,
        ode_steps: int,
        distill_width: int = 0,
        distill_layers: int = 2,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"data dimension must be >= 1, got {dim}")
        if any(h <= 0 for h in step_sizes):
            raise ValueError(f"OU step sizes must be positive, got {step_sizes}")
        if not step_sizes and not free_final_block:
            raise ValueError("a chain needs at least one block: give step sizes or a free final block")
        if ode_steps < 1:
            raise ValueError(f"ode_steps must be >= 1, got {ode_steps}")
        self.dim = dim
        self.step_sizes = tuple(float(h) for h in step_sizes)
        self.free_final_block = free_final_block
        self.ode_steps = ode_steps
        num_blocks = len(self.step_sizes) + int(free_final_block)
        self.velocities = nn.ModuleList(VelocityField(dim, hidden_width, hidden_layers) for _ in range(num_blocks))
        self.one_step_maps = nn.ModuleList(
            OneStepMap(dim, distill_width, distill_layers) for _ in range(num_blocks if distill_width > 0 else 0)
        )

    @property
    def num_blocks(self) -> int:
        return len(self.velocities)

    @property
    def has_distilled_maps(self) -> bool:
        return len(self.one_step_maps) > 0

    def is_free_block(self, block: int) -> bool:
        return self.free_final_block and block == self.num_blocks - 1

    def block_target(self, block: int, x_left: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The right end x_r paired with x_l for training ``block``: the OU step, or the noise itself."""
        self._check_block(block)
        if self.is_free_block(block):
            return noise
        return ou_transition(x_left, self.step_sizes[block], noise)

    def transport(self, x: torch.Tensor, block: int, reverse: bool = False) -> torch.Tensor:
        """Apply T_block (data -> noise side) or, with ``reverse``, its inverse, by RK4 integration."""
        self._check_block(block)
        start, end = (1.0, 0.0) if reverse else (0.0, 1.0)
        return integrate(self.velocities[block], x, start, end, self.ode_steps)

    def push_forward(self, x: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """Carry data through the first ``num_blocks`` blocks (their outputs feed the next block's training)."""
        if not 0 <= num_blocks <= self.num_blocks:
            raise ValueError(f"num_blocks must be in [0, {self.num_blocks}], got {num_blocks}")
        for block in range(num_blocks):
            x = self.transport(x, block)
        return x

    def generate(self, noise: torch.Tensor, distilled: bool = False) -> torch.Tensor:
        """Map N(0, I) samples back to data space: the inverse ODE blocks, or the one-step maps."""
        if distilled and not self.has_distilled_maps:
            raise ValueError("this chain was built without one-step maps (distill is off)")
        x = noise
        for block in reversed(range(self.num_blocks)):
            x = self.one_step_maps[block](x) if distilled else self.transport(x, block, reverse=True)
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Model log-density of ``x`` by the change of variables through every block (exact divergence)."""
        total_log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for velocity in self.velocities:
            x, log_det = integrate_with_log_det(velocity, x, self.ode_steps)
            total_log_det = total_log_det + log_det
        log_normal = -0.5 * (x.square().sum(dim=1) + self.dim * math.log(2.0 * math.pi))
        return log_normal + total_log_det

    def velocity_parameter_count(self) -> int:
        return sum(p.numel() for p in self.velocities.parameters())

    def _check_block(self, block: int) -> None:
        if not 0 <= block < self.num_blocks:
            raise IndexError(f"block {block} outside the chain of {self.num_blocks} blocks")
