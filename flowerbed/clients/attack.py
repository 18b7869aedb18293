"""The Attack API: the public extension point for writing an attacker client.

An attacker is a benign client plus an :class:`Attack`. The platform's
training loop calls, per round in which the attacker is active:

0. ``wants_benign_update(memory)``: if True, the platform first trains a
   copy of the global model on this client's clean data exactly as a benign
   client would (no poisoning, no gradient hook) and hands the update to
   ``on_benign_update(update, memory)`` (e.g. Neurotoxin's mask source);
1. ``on_train_start(model, global_state, memory)`` once, after the global
   weights are loaded;
2. ``poison(x, y, generator)`` on every training batch (data poisoning);
3. ``after_backward(model)`` after every ``loss.backward()``, before
   ``optimizer.step()`` (gradient shaping, e.g. Neurotoxin);
4. ``craft(update, memory)`` on ``update = local_state - global_state``
   (floating tensors only) before sending it (model poisoning).

``train_overrides()`` may change local training for attackers (more epochs, a
different learning rate); ``backdoors`` lists what the server measures.
Following BackFed, what a trigger does to data (``flowerbed.clients.triggers``)
is kept apart from how an attacker trains and shapes its update, so any attack
runs with any trigger.

Write your own attack by subclassing :class:`Attack` in your own module and
naming it by import path (``my_attacks:MyAttack``); see docs/custom-attacker.md.
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from flowerbed.clients.triggers.base import Backdoor
from flowerbed.platform.plugin_params import coerce_params


class AttackParams(BaseModel):
    """Base for an attack's hyper-parameters (run-config keys ``attack.<name>.<param>``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


class PoisonTrainingParams(AttackParams):
    """Local-training changes for attackers, as in DBA (Xie et al., ICLR 2020), which
    trains poisoned clients longer and with their own learning rate. None = as benign."""

    poison_epochs: int | None = Field(
        None, alias="poison-epochs", ge=1, description="Local epochs of an active attacker; default: the benign value."
    )
    attacker_lr: float | None = Field(
        None, alias="attacker-lr", gt=0, description="Learning rate of an active attacker; default: the benign value."
    )


def poison_count(batch_size: int, fraction: float) -> int:
    """Samples of a batch to poison: ``fraction * batch_size`` rounded half up."""
    return min(batch_size, math.floor(fraction * batch_size + 0.5))


def stamp(x: Tensor, y: Tensor, index: Tensor, backdoor: Backdoor) -> None:
    """In place on (copies) ``x``/``y``: apply ``backdoor`` to rows ``index`` and relabel them."""
    if index.numel() == 0:
        return
    x[index] = backdoor.trigger.apply(x[index])
    y[index] = backdoor.target


class Attack(ABC):
    """Base class of attacks. Every hook has a harmless default; override what you need.

    ``params``: a ``Params`` instance, a mapping validated into one, or None
    for the defaults. ``backdoor``: this attacker's trigger and target.
    ``colluders``: the backdoors of the *other* attackers of the run.
    ``poison_fraction``: share of each training batch to poison (run config).
    """

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = AttackParams
    default_trigger: ClassVar[str] = "patch"

    def __init__(
        self,
        params: BaseModel | Mapping[str, Any] | None = None,
        *,
        backdoor: Backdoor,
        colluders: Sequence[Backdoor] = (),
        poison_fraction: float,
    ) -> None:
        params = coerce_params(f"attack.{self.name}", self.Params, params)
        if not 0.0 <= poison_fraction <= 1.0:
            raise ValueError(f"poison_fraction must be in [0, 1], got {poison_fraction}")
        self.params = params
        self.backdoor = backdoor
        self.colluders = list(colluders)
        self.poison_fraction = poison_fraction

    @property
    def backdoors(self) -> list[Backdoor]:
        """The backdoors the server should measure for this attacker."""
        return [self.backdoor]

    def poison(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Poison one training batch: a ``poison_fraction`` share (rounded half up),
        chosen with ``generator``, gets the trigger and the target label.

        Returns new tensors; ``x`` and ``y`` are not modified.
        """
        chosen = self.choose(len(x), self.poison_fraction, generator).to(x.device)
        x, y = x.clone(), y.clone()
        stamp(x, y, chosen, self.backdoor)
        return x, y

    def wants_benign_update(self, memory: dict[str, Tensor]) -> bool:
        """Whether this round needs a benign reference update (see :meth:`on_benign_update`).

        Asked once per active round, before :meth:`on_train_start` (so ``memory`` is as
        the previous active round left it). Default False: no extra training.
        """
        return False

    def on_benign_update(self, update: dict[str, Tensor], memory: dict[str, Tensor]) -> None:
        """Receive the benign reference update, when :meth:`wants_benign_update` said True.

        ``update`` is ``trained - global`` over the model's trainable parameters
        (``named_parameters()`` with ``requires_grad``), where ``trained`` is a copy of
        the global model trained on this client's clean data with the benign settings
        (the run's local epochs and learning rate, no :meth:`train_overrides`, no
        :meth:`poison`, no :meth:`after_backward`) and its own seeded generator: what
        this client would send if it were honest. Called before :meth:`on_train_start`.
        """

    def on_train_start(self, model: nn.Module, global_state: dict[str, Tensor], memory: dict[str, Tensor]) -> None:
        """Called once per active round before local training; ``memory`` persists across rounds."""

    def after_backward(self, model: nn.Module) -> None:
        """Called after each ``loss.backward()``, before ``optimizer.step()``."""

    def craft(self, update: dict[str, Tensor], memory: dict[str, Tensor]) -> dict[str, Tensor]:
        """Model poisoning: return the update to send (default: unchanged)."""
        return update

    def train_overrides(self) -> dict[str, Any]:
        """Changes to local training, e.g. ``{"local-epochs": 4, "lr": 0.02}``.

        Default: ``{}``, or the ``poison-epochs`` / ``attacker-lr`` that are set
        when ``Params`` derives from :class:`PoisonTrainingParams`.
        """
        overrides: dict[str, Any] = {}
        if isinstance(self.params, PoisonTrainingParams):
            if self.params.poison_epochs is not None:
                overrides["local-epochs"] = self.params.poison_epochs
            if self.params.attacker_lr is not None:
                overrides["lr"] = self.params.attacker_lr
        return overrides

    @staticmethod
    def choose(batch_size: int, fraction: float, generator: torch.Generator) -> Tensor:
        """Random distinct row indices, ``poison_count(batch_size, fraction)`` of them."""
        return torch.randperm(batch_size, generator=generator)[: poison_count(batch_size, fraction)]

    def describe(self) -> dict[str, Any]:
        """JSON-able description for ``attackers.json``."""
        return {
            "attack": getattr(self, "name", type(self).__name__),
            "params": self.params.model_dump(by_alias=True),
            "poison_fraction": self.poison_fraction,
            "backdoors": [backdoor.describe() for backdoor in self.backdoors],
            "train_overrides": self.train_overrides(),
        }
