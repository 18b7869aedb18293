"""Neurotoxin: durable backdoors by training on rarely-updated coordinates.

Zhang et al., "Neurotoxin: Durable Backdoors in Federated Learning" (ICML 2022).
Benign clients mostly move the coordinates with the largest recent change, so
the attacker zeroes its gradient on the top-k% coordinates (by magnitude) of a
benign direction and trains only on the rest; the backdoor then lives where
benign training rarely overwrites it. The mask is taken over all trainable
parameters together (the authors' ``aggregate_all_layer=1``) and applied after
every backward pass. ``mask-source`` picks the benign direction:

- ``global-update`` (default; the paper's description, Algorithm 1): the last
  global update ``global_now - global_prev`` the attacker observed. ``memory``
  keeps the global parameters of this attacker's previous active round as
  ``global_prev``. In its first active round there is no previous model, so
  the mask falls back to the benign reference update below (without it the
  first attack round would be plain, unmasked poisoning).
- ``benign-update`` (the authors' code, jhcknzzm/Federated-Learning-Backdoor
  ``train_funcs.py`` / ``helper.grad_mask_cv``, and BackFed's
  ``NeurotoxinClient._compute_grad_mask``): every round, a benign direction
  computed from the current global model on the attacker's clean data. Those
  implementations take the gradient summed over one pass of clean batches at
  the global model; here it is the benign reference update
  (:meth:`~flowerbed.clients.attack.Attack.on_benign_update`): the global model
  trained on the attacker's clean data with the benign settings, i.e. the update
  this client would send if honest. For one plain SGD step the two rank the
  coordinates alike (``update = -lr * gradient``).

Default ``mask-ratio`` 0.05 = the authors' CV runs (``--gradmask_ratio 0.95``
keeps the bottom 95%). ``memory`` lives in the client's Flower context, which a
resumed run starts empty: there the first resumed active round masks by the
benign update, as a first round does.
"""

from __future__ import annotations

from typing import Literal

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
        description="Share k of coordinates (largest |benign direction|) whose gradient is zeroed (paper code: 0.05).",
    )
    mask_source: Literal["global-update", "benign-update"] = Field(
        "global-update",
        alias="mask-source",
        description=(
            "Direction whose top-k coordinates are masked: the last observed global update (paper; the first "
            "active round falls back to the benign update) or, every round, the attacker's benign update of the "
            "current global model on its clean data (authors' code)."
        ),
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
    """Poison data; zero the gradient on the top ``mask-ratio`` coordinates of a benign direction."""

    name = "neurotoxin"
    Params = NeurotoxinParams
    default_trigger = "patch"

    def __init__(self, params=None, *, backdoor, colluders=(), poison_fraction) -> None:
        super().__init__(params, backdoor=backdoor, colluders=colluders, poison_fraction=poison_fraction)
        self.masks: dict[str, Tensor] | None = None
        self.benign_update: dict[str, Tensor] | None = None  # this round's, from on_benign_update

    def wants_benign_update(self, memory: dict[str, Tensor]) -> bool:
        """Always for ``benign-update``; for ``global-update`` only while no previous global model is
        remembered (the first active round). Never with ``mask-ratio`` 0 (nothing is masked)."""
        if self.params.mask_ratio == 0.0:
            return False
        if self.params.mask_source == "benign-update":
            return True
        return not any(key.startswith(MEMORY_PREFIX) for key in memory)

    def on_benign_update(self, update: dict[str, Tensor], memory: dict[str, Tensor]) -> None:
        self.benign_update = update

    def on_train_start(self, model: nn.Module, global_state: dict[str, Tensor], memory: dict[str, Tensor]) -> None:
        names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
        previous = {name: memory.get(MEMORY_PREFIX + name) for name in names}
        benign, self.benign_update = self.benign_update, None  # used for this round only
        has_previous = bool(names) and all(
            p is not None and p.shape == global_state[n].shape for n, p in previous.items()
        )
        if self.params.mask_ratio == 0.0:
            self.masks = None
        elif self.params.mask_source == "global-update" and has_previous:
            changes = {n: global_state[n].float() - previous[n].to(global_state[n].device).float() for n in names}
            self.masks = top_k_mask(changes, self.params.mask_ratio)
        elif benign is not None and set(benign) == set(names):
            self.masks = top_k_mask({n: benign[n] for n in names}, self.params.mask_ratio)
        else:
            raise RuntimeError(
                f"neurotoxin (mask-source={self.params.mask_source!r}) needs the benign reference update of the "
                "trainable parameters this round: the platform must call on_benign_update() whenever "
                "wants_benign_update() is True"
            )
        for name in names:
            memory[MEMORY_PREFIX + name] = global_state[name].detach().clone()

    def after_backward(self, model: nn.Module) -> None:
        if self.masks is None:
            return
        for name, parameter in model.named_parameters():
            if parameter.grad is not None and name in self.masks:
                parameter.grad.mul_(self.masks[name].to(parameter.grad.device, parameter.grad.dtype))
