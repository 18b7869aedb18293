"""Model replacement (boosted update), optionally norm-bounded.

Bagdasaryan et al., "How To Backdoor Federated Learning" (AISTATS 2020): the
attacker trains on poisoned data, then scales its update by
``gamma = n / eta`` (n clients aggregated per round, eta the server learning
rate) so that, averaged with the benign updates, it replaces the global model
by its own backdoored one. The "bounded" variant additionally projects the
boosted update onto an L2 ball of radius ``max-norm`` so it passes a norm
bound (cf. Sun et al., "Can You Really Backdoor Federated Learning?", 2019).
Default ``boost`` = 10: 10 clients per round with server lr 1, the DMBA notes'
FL setting; set it to your clients-per-round / server-lr.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from flowerbed.clients.attack import Attack, PoisonTrainingParams
from flowerbed.platform.registry import ATTACKS


class ModelReplacementParams(PoisonTrainingParams):
    boost: float = Field(10.0, gt=0, description="Scale factor gamma of the update (= clients per round / server lr).")
    max_norm: float | None = Field(
        None, alias="max-norm", gt=0, description="If set, L2 bound of the whole boosted update (bounded variant)."
    )


def total_norm(update: dict[str, Tensor]) -> Tensor:
    """L2 norm of all tensors of an update taken together."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.double()) for t in update.values()]))


@ATTACKS.register("model-replacement")
class ModelReplacement(Attack):
    """Poison data like BadNets, then send ``boost * update`` (clipped to ``max-norm`` if set)."""

    name = "model-replacement"
    Params = ModelReplacementParams
    default_trigger = "patch"

    def craft(self, update: dict[str, Tensor], memory: dict[str, Tensor]) -> dict[str, Tensor]:
        scale = torch.tensor(self.params.boost, dtype=torch.float64)
        if self.params.max_norm is not None and update:
            boosted_norm = total_norm(update) * self.params.boost
            if boosted_norm > self.params.max_norm:
                scale = scale * self.params.max_norm / boosted_norm
        return {name: tensor * scale.to(tensor.dtype) for name, tensor in update.items()}
