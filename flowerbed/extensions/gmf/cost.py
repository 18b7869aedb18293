"""Model cost: trainable parameters and inference FLOPs per example.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (counts matmuls,
so 2 x multiply-adds). Attention runs through the math SDPA kernel while
counting, because the fused CPU kernel is invisible to the counter, and with
autograd on, because the Transformer fast path skips the counted ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (GMF decoders included: they are trained and sent each round)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_inference_flops(model: nn.Module, input_dims: Sequence[int]) -> int:
    """FLOPs of one forward pass on a single example with every modality present."""
    features = [torch.zeros(1, d) for d in input_dims]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(features)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
