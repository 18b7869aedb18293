"""A user-written attacker for flowerbed (the example of docs/custom-attacker.md)."""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import Field
from torch import Tensor

from flowerbed.clients.attack import Attack, PoisonTrainingParams
from flowerbed.platform.arrays import RUNNING_STATISTICS
from flowerbed.platform.registry import ATTACKS


class SourceSpecificParams(PoisonTrainingParams):
    """Hyper-parameters, set as run-config keys ``attack.my-attack.<alias>``."""

    source_class: int = Field(0, alias="source-class", ge=0, description="Only images of this class get the trigger.")
    boost: float = Field(2.0, gt=0, description="Scale factor of the update sent to the server.")


@ATTACKS.register("my-attack")  # optional: lets `plugins = "my_attacks"` make it known by name
class MyAttack(Attack):
    """Source-specific backdoor: only images of ``source-class`` are triggered and
    relabelled, so the trigger does not fire on other classes; the update is boosted."""

    name = "my-attack"
    Params = SourceSpecificParams
    default_trigger = "patch"  # any registered trigger name; the run config may override it

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The server then measures this backdoor's ASR on triggered images of the source class only.
        self.backdoor = replace(self.backdoor, source_classes=(self.params.source_class,))

    def poison(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = x.clone(), y.clone()  # never modify the caller's batch
        sources = torch.nonzero(y == self.params.source_class).flatten()
        count = round(self.poison_fraction * len(sources))
        chosen = sources[torch.randperm(len(sources), generator=generator)[:count]]
        x[chosen] = self.backdoor.trigger.apply(x[chosen])
        y[chosen] = self.backdoor.target
        return x, y

    def craft(self, update: dict[str, Tensor], memory: dict[str, Tensor]) -> dict[str, Tensor]:
        # ``memory`` persists across this attacker's rounds: count the rounds it attacked.
        memory["rounds"] = memory.get("rounds", torch.tensor(0)) + 1
        # Boost the learned weights, not BatchNorm's running statistics: a boosted running
        # variance can turn negative, and the server stops a run whose model evaluates to NaN.
        return {
            name: delta if name.endswith(RUNNING_STATISTICS) else self.params.boost * delta
            for name, delta in update.items()
        }
