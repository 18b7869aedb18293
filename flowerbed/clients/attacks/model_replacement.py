"""Model replacement (boosted update), optionally norm-bounded.

Bagdasaryan et al., "How To Backdoor Federated Learning" (AISTATS 2020): the
attacker trains on poisoned data, then scales its update by
``gamma = n / eta`` (n clients aggregated per round, eta the server learning
rate) so that, averaged with the benign updates, it replaces the global model
by its own backdoored one. Every floating-point entry is scaled, BatchNorm's
running statistics too, as the authors' code scales every state-dict entry
(ebagdasa/backdoor_federated_learning). The "bounded" variant additionally
shrinks the boosted update so that its learned weights' L2 norm is at most
``max-norm`` (the norm every defence here measures: running statistics are
left out of it), so it passes a norm bound (cf. Sun et al., "Can You Really
Backdoor Federated Learning?", 2019). This is not the paper's
constrain-and-scale (an anomaly-detection term in the attacker's loss).

Default ``boost`` = 10: 10 clients per round with server lr 1, the DMBA notes'
FL setting; set it to your clients-per-round / server-lr. Two caveats of
``gamma = n / eta``: it assumes equal client weights, and flowerbed's FedAvg
weights clients by examples, so exact replacement needs about (examples in the
round) / (the attacker's examples); and each attacker applies the full boost,
where the authors' code divides it among the round's attackers
(``scale_weights / current_number_of_adversaries``): with k attackers set
``boost`` to gamma / k.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from flowerbed.clients.attack import Attack, PoisonTrainingParams
from flowerbed.platform.arrays import RUNNING_STATISTICS
from flowerbed.platform.registry import ATTACKS


class ModelReplacementParams(PoisonTrainingParams):
    boost: float = Field(10.0, gt=0, description="Scale factor gamma of the update (= clients per round / server lr).")
    max_norm: float | None = Field(
        None,
        alias="max-norm",
        gt=0,
        description="If set, L2 bound of the boosted update's learned weights (bounded variant).",
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
        """``boost`` x every entry, shrunk so the learned weights' norm stays within ``max-norm`` if set."""
        scale = torch.tensor(self.params.boost, dtype=torch.float64)
        learned = {name: tensor for name, tensor in update.items() if not name.endswith(RUNNING_STATISTICS)}
        if self.params.max_norm is not None and learned:
            boosted_norm = total_norm(learned) * self.params.boost
            if boosted_norm > self.params.max_norm:
                scale = scale * self.params.max_norm / boosted_norm
        return {name: tensor * scale.to(tensor.dtype) for name, tensor in update.items()}
