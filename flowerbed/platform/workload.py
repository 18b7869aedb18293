"""The Workload protocol: what a client trains and how the server judges it.

Image classification (the backdoor setting) is one workload; every extension is
another. The ClientApp and ServerApp only ever talk to a Workload, so a new
research method plugs into the same simulation, recorder and plots.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from flowerbed.platform.errors import ConfigError

if TYPE_CHECKING:
    from flowerbed.platform.server_model import ServerModelHooks


class WorkloadParams(BaseModel):
    """Base for a workload's own hyper-parameters (run-config keys ``workload.<name>.<param>``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


@dataclass
class TrainContext:
    """Everything a client needs to train one round (built by the ClientApp)."""

    server_round: int
    partition_id: int
    num_partitions: int
    local_epochs: int
    lr: float
    batch_size: int
    generator: torch.Generator  # seeded from (run seed, round, partition id)
    # Optional hook that rewrites a training batch (x, y) -> (x, y); attackers use it to poison.
    poison_batch: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    # Optional hook called after each ``loss.backward()``, before the optimiser step.
    after_backward: Callable[[nn.Module], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Workload(ABC):
    """A trainable, evaluable task.

    Subclasses set ``name`` and, if they take hyper-parameters, ``Params``
    (a :class:`WorkloadParams` subclass). ``config`` is the validated run
    config; ``params`` are this workload's own validated parameters.
    """

    name: ClassVar[str]
    Params: ClassVar[type[WorkloadParams]] = WorkloadParams
    # Whether attackers (``attack.num-attackers > 0``) can poison this workload's training.
    # Attacks poison labelled image batches, so only image classification sets it.
    supports_attacks: ClassVar[bool] = False

    def __init__(self, config: Any, params: WorkloadParams | None = None) -> None:
        self.config = config
        self.params = params if params is not None else self.Params()
        # The backdoors of the run's attack plan (set by ``run_parts.build_run``): objects with
        # .name, .trigger.apply(), .target. A workload that ``supports_attacks`` measures each
        # one's attack success rate in :meth:`evaluate`; every other workload has none.
        self.backdoors: list[Any] = []

    @classmethod
    def check_config(cls, config: Any, params: WorkloadParams) -> list[str]:
        """Problems between the run config and this workload's params, each naming its keys.

        Called by :func:`~flowerbed.platform.config.parse_run_config` before round 1, with
        ``params`` already validated; the default finds none.
        """
        return []

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (seeded by the caller)."""

    @abstractmethod
    def client_dataset(self, partition_id: int, num_partitions: int) -> Any:
        """The local training data of one partition (one client)."""

    @abstractmethod
    def train(self, model: nn.Module, dataset: Any, context: TrainContext) -> dict[str, float]:
        """Train ``model`` in place; return at least ``train_loss`` and ``num-examples``."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Server-side evaluation on held-out data: metric name -> value (or dict of values)."""

    def headline_metric(self) -> tuple[str, str]:
        """The headline metric and whether higher ("max") or lower ("min") is better.

        Summaries report its best value and round; progress lines print it.
        """
        return "clean_acc", "max"

    # ------------------------------------------------------------- optional hooks
    # Defaults for what only some workloads offer; the platform calls them unconditionally.

    def server_model_hooks(self) -> ServerModelHooks | None:
        """What model-aware defences need from the server's side (FLTrust's root-data update,
        DeepSight's predictions); None: this workload lends none, and those defences refuse to start."""
        return None

    def site_dataset(self, root: str) -> Any:
        """A site's own training data from folder ``root`` on its SuperNode (node config
        ``data-root``), used instead of partition ``partition-id`` of the run's dataset."""
        raise ConfigError([f"node config 'data-root': workload '{self.name}' cannot read a site's own data (only its partitions)"])

    def local_backdoor_accuracy(self, model: nn.Module, dataset: Any, backdoor: Any) -> float | None:
        """The attack success rate of an attacker's trained ``model`` on its own ``dataset``
        (recorded as ``local_asr``); None: this workload cannot measure it."""
        return None
