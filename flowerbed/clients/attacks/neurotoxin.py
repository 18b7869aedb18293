"""Neurotoxin: durable backdoors by training on rarely-updated coordinates.

Zhang et al., "Neurotoxin: Durable Backdoors in Federated Learning" (ICML 2022).
Benign clients mostly move the coordinates with the largest recent change, so
the attacker masks its gradient on the top-k% coordinates (by magnitude) of the
last observed global update ``global_now - global_prev`` and trains only on
the rest; the backdoor then lives where benign training rarely overwrites it.
The mask is taken over all trainable parameters together (the authors'
``aggregate_all_layer=1``) and applied after every backward pass.

``memory`` keeps the global parameters seen at this attacker's previous active
round, so ``global_prev`` is the last global model this attacker observed; in
its first active round there is no previous model and no mask (plain
poisoning). Default ``mask-ratio`` 0.05 = the authors' CV runs
(``--gradmask_ratio 0.95`` keeps the bottom 95%).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from flowerbed.clients.attack import Attack, PoisonTrainingParams
from flowerbed.platform.registry import ATTACKS

MEMORY_PREFIX = "neurotoxin.global_prev."


class NeurotoxinParams(PoisonTrainingParams):
    mask_ratio: float = Field(
        0.05,
        alias="mask-ratio",
        ge=0.0,
        lt=1.0,
        description="Share k of coordinates (largest |global update|) whose gradient is zeroed (paper code: 0.05).",
    )


def top_k_mask(changes: dict[str, Tensor], ratio: float) -> dict[str, Tensor]:
    """Per tensor, 0 on the ``ratio`` share of largest-|change| coordinates (counted over all tensors), 1 elsewhere."""
    flat = torch.cat([c.detach().abs().flatten() for c in changes.values()])
    keep = torch.ones_like(flat)
    masked = round(ratio * flat.numel())
    if masked > 0:
        keep[torch.topk(flat, masked, sorted=False).indices] = 0.0
    sizes = [c.numel() for c in changes.values()]
    return {name: part.view_as(change) for (name, change), part in zip(changes.items(), keep.split(sizes), strict=True)}


@ATTACKS.register("neurotoxin")
class Neurotoxin(Attack):
    """Poison data; zero the gradient on the top ``mask-ratio`` coordinates of the last global update."""

    name = "neurotoxin"
    Params = NeurotoxinParams
    default_trigger = "patch"

    def __init__(self, params=None, *, backdoor, colluders=(), poison_fraction) -> None:
        super().__init__(params, backdoor=backdoor, colluders=colluders, poison_fraction=poison_fraction)
        self.masks: dict[str, Tensor] | None = None

    def on_train_start(self, model: nn.Module, global_state: dict[str, Tensor], memory: dict[str, Tensor]) -> None:
        names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
        previous = {name: memory.get(MEMORY_PREFIX + name) for name in names}
        self.masks = None
        if names and all(p is not None and p.shape == global_state[n].shape for n, p in previous.items()):
            changes = {n: global_state[n].float() - previous[n].to(global_state[n].device).float() for n in names}
            self.masks = top_k_mask(changes, self.params.mask_ratio)
        for name in names:
            memory[MEMORY_PREFIX + name] = global_state[name].detach().clone()

    def after_backward(self, model: nn.Module) -> None:
        if self.masks is None:
            return
        for name, parameter in model.named_parameters():
            if parameter.grad is not None and name in self.masks:
                parameter.grad.mul_(self.masks[name].to(parameter.grad.device, parameter.grad.dtype))
