"""DMBA attacker: dispersed frequency trigger plus backdoor replay.

Liu et al., "Act in Collusion: A Persistent Distributed Multi-Target Backdoor
in Federated Learning" (arXiv:2411.03926). Colluding attackers each implant
their own trigger (the ``dmba`` trigger: own channel, own DCT positions) mapped
to their own target class. Backdoor replay counters forgetting: each attacker's
poisoned samples also carry the *colluders'* triggers with *their* targets, so a
new injection does not erase the earlier backdoors.

The paper's code is not public; the mechanics here are ours:

- ``replay="colluders"``: of the ``poison_fraction`` share of each batch that is
  poisoned, a ``replay-ratio`` share carries colluders' triggers (split evenly
  between colluders, random order), the rest this attacker's own trigger.
  ``replay="none"`` poisons with the own trigger only (the no-replay ablation).
- Default ``replay-ratio`` = k / (k + 1) for k colluders: every backdoor of the
  collusion gets the same share of poisoned samples, so no backdoor is favoured
  by the attacker that happens to train, and the clean share of the batch is the
  same as without replay (replay does not cost main-task accuracy).
- Optional bounded scaling of the update ("constrain and scale", Bagdasaryan et
  al., AISTATS 2020): ``boost`` multiplies the learned weights' update, and
  ``max-norm``, if set, caps its L2 norm. BatchNorm running statistics are
  sent as trained: they are measured, not learned, and scaling them can make a
  variance negative. Default: no scaling (the DMBA paper does not mention any).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from flowerbed.clients.attack import Attack, PoisonTrainingParams, poison_count, stamp
from flowerbed.clients.attacks.model_replacement import total_norm
from flowerbed.platform.arrays import RUNNING_STATISTICS
from flowerbed.platform.registry import ATTACKS


class DMBAAttackParams(PoisonTrainingParams):
    replay: Literal["colluders", "none"] = Field(
        "colluders", description="'colluders': replay the other attackers' backdoors; 'none': own trigger only."
    )
    replay_ratio: float | None = Field(
        None,
        alias="replay-ratio",
        ge=0.0,
        le=1.0,
        description="Share of the poisoned samples carrying colluders' triggers; default k/(k+1) for k colluders.",
    )
    boost: float = Field(
        1.0, ge=1.0, description="Scale of the update of the learned weights (BatchNorm statistics unscaled); 1 = none."
    )
    max_norm: float | None = Field(
        None, alias="max-norm", gt=0, description="If set, L2 bound of the (boosted) learned-weight update."
    )


@ATTACKS.register("dmba")
class DMBA(Attack):
    """Poison with the own DMBA trigger and replay the colluders' backdoors in the same batch."""

    name = "dmba"
    Params = DMBAAttackParams
    default_trigger = "dmba"

    @property
    def replayed(self) -> list:
        """The colluders' backdoors this attacker replays."""
        return self.colluders if self.params.replay == "colluders" else []

    @property
    def replay_ratio(self) -> float:
        """The effective replay ratio (0 when nothing is replayed)."""
        replayed = len(self.replayed)
        if replayed == 0:
            return 0.0
        if self.params.replay_ratio is not None:
            return self.params.replay_ratio
        return replayed / (replayed + 1)

    def poison(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Poison ``poison_fraction`` of the batch: a ``replay_ratio`` share of those rows
        with colluders' backdoors (evenly, colluder order shuffled), the rest with the own."""
        chosen = self.choose(len(x), self.poison_fraction, generator).to(x.device)
        replay_rows = poison_count(len(chosen), self.replay_ratio)
        own, replay = chosen[: len(chosen) - replay_rows], chosen[len(chosen) - replay_rows :]
        x, y = x.clone(), y.clone()
        stamp(x, y, own, self.backdoor)
        if replay_rows:
            replayed = self.replayed
            order = torch.randperm(len(replayed), generator=generator).tolist()
            for slot, colluder in enumerate(order):
                stamp(x, y, replay[slot :: len(replayed)], replayed[colluder])
        return x, y

    def craft(self, update: dict[str, Tensor], memory: dict[str, Tensor]) -> dict[str, Tensor]:
        """Bounded scaling: ``boost`` x the learned weights' update, then capped at ``max-norm``."""
        boost, max_norm = self.params.boost, self.params.max_norm
        if boost == 1.0 and max_norm is None:
            return update
        learned = [name for name in update if not name.endswith(RUNNING_STATISTICS)]
        scale = torch.tensor(boost, dtype=torch.float64)
        if max_norm is not None and learned:
            boosted_norm = total_norm({name: update[name] for name in learned}) * boost
            if boosted_norm > max_norm:
                scale = scale * max_norm / boosted_norm
        return {
            name: tensor * scale.to(tensor.dtype) if name in learned else tensor for name, tensor in update.items()
        }
