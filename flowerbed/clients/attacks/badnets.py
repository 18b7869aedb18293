"""BadNets data poisoning.

Gu et al., "BadNets: Identifying Vulnerabilities in the Machine Learning Model
Supply Chain" (arXiv:1708.06733, 2017): a share of the attacker's training
batch gets a patch trigger and the target label (dirty-label poisoning).
"""

from __future__ import annotations

from flowerbed.clients.attack import Attack, PoisonTrainingParams
from flowerbed.platform.registry import ATTACKS


@ATTACKS.register("badnets")
class BadNets(Attack):
    """Stamp the trigger (default: a corner patch) on ``poison_fraction`` of each batch."""

    name = "badnets"
    Params = PoisonTrainingParams
    default_trigger = "patch"
