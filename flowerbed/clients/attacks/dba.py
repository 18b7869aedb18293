"""DBA: distributed backdoor attack.

Xie et al., "DBA: Distributed Backdoor Attacks against Federated Learning"
(ICLR 2020). Each attacker poisons with its own local piece of a global
pattern (the ``dba`` trigger gives piece ``index`` to attacker ``index``); the
server measures the assembled global trigger as the backdoor ``dba-global``
(the attack's headline ASR, as in the paper), and each piece (``dba-0``, ...)
as a part of it. All DBA attackers of a run share one target class. In the
paper poisoned clients train with their own epochs and learning rate (CIFAR:
6 poison epochs, lr 0.05, vs 2 and 0.1 for benign clients): set
``poison-epochs`` / ``attacker-lr`` to match.

Not scaled: the authors' single-shot setting multiplies each attacker's update
by ``scale_weights_poison`` (100 for CIFAR); flowerbed's DBA sends its update as
trained, the multi-shot setting (attackers in many rounds). For a boosted attack
see ``model-replacement``.
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
