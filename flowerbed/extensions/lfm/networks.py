"""The small MLPs of Local Flow Matching: a time-conditioned velocity field per block and its
one-step distilled map.

As in the official code of Xu et al. (arXiv:2410.02548) the velocity MLP takes [t, x]
concatenated and uses Softplus(beta=20) activations. The last layer starts at zero, so an
untrained block is the identity map: a chain whose later blocks are not trained yet (early
federated rounds) still generates through the blocks that are.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _mlp(in_features: int, out_features: int, width: int, hidden_layers: int) -> nn.Sequential:
    if width < 1 or hidden_layers < 1:
        raise ValueError(f"MLP needs width >= 1 and hidden_layers >= 1, got {width} and {hidden_layers}")
    layers: list[nn.Module] = []
    features = in_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(features, width), nn.Softplus(beta=20.0)]
        features = width
    last = nn.Linear(features, out_features)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class VelocityField(nn.Module):
    """v(x, t): R^d x [0, 1] -> R^d, one LFM block (t = 0 data side, t = 1 noise side)."""

    def __init__(self, dim: int, width: int, hidden_layers: int) -> None:
        super().__init__()
        self.dim = dim
        self.net = _mlp(dim + 1, dim, width, hidden_layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """``x`` is (batch, d); ``t`` is a float, a 0-d tensor or a (batch, 1) tensor."""
        if not torch.is_tensor(t) or t.dim() == 0:
            t = torch.full((x.shape[0], 1), float(t), dtype=x.dtype, device=x.device)
        return self.net(torch.cat([t, x], dim=1))


class OneStepMap(nn.Module):
    """G(x) = x + g(x): a one-step replacement for one block's ODE map in the generative direction."""

    def __init__(self, dim: int, width: int, hidden_layers: int) -> None:
        super().__init__()
        self.net = _mlp(dim, dim, width, hidden_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def mlp_parameter_count(in_features: int, out_features: int, width: int, hidden_layers: int) -> int:
    """Number of parameters of the MLP built by :func:`_mlp` (weights and biases)."""
    first = (in_features + 1) * width
    middle = (hidden_layers - 1) * (width + 1) * width
    last = (width + 1) * out_features
    return first + middle + last


def width_for_parameter_budget(in_features: int, out_features: int, hidden_layers: int, budget: int) -> int:
    """The hidden width whose MLP (as built here) has the parameter count closest to ``budget``.

    Used to give a global flow-matching baseline the same parameters as a chain of blocks
    (a velocity field has ``in_features = d + 1``, a one-step map ``d``).
    """
    if budget < 1:
        raise ValueError(f"parameter budget must be positive, got {budget}")
    # mlp_parameter_count is a w^2 + b w + c; solve for w, then check the integers either side.
    a = hidden_layers - 1
    b = (in_features + 1) + (hidden_layers - 1) + out_features
    c = out_features
    if a == 0:
        estimate = (budget - c) / b
    else:
        estimate = (-b + math.sqrt(b * b + 4 * a * max(budget - c, 0))) / (2 * a)
    candidates = {max(1, math.floor(estimate)), max(1, math.ceil(estimate))}
    return min(candidates, key=lambda w: abs(mlp_parameter_count(in_features, out_features, w, hidden_layers) - budget))
