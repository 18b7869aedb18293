"""DBA: distributed backdoor attack.

Xie et al., "DBA: Distributed Backdoor Attacks against Federated Learning"
(ICLR 2020). Each attacker poisons with its own local piece of a global
pattern (the ``dba`` trigger gives piece ``index`` to attacker ``index``); the
server also measures the assembled global trigger
(:meth:`DBATrigger.global_trigger`). In the paper poisoned clients train with
their own epochs and learning rate (CIFAR: 6 poison epochs, lr 0.05, vs 2 and
0.1 for benign clients): set ``poison-epochs`` / ``attacker-lr`` to match.
"""

from __future__ import annotations

from flowerbed.clients.attack import Attack, PoisonTrainingParams
from flowerbed.platform.registry import ATTACKS


@ATTACKS.register("dba")
class DBA(Attack):
    """Poison ``poison_fraction`` of each batch with this attacker's local DBA piece."""

    name = "dba"
    Params = PoisonTrainingParams
    default_trigger = "dba"
