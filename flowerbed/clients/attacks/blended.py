"""Blended data poisoning.

Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems Using Data
Poisoning" (arXiv:1712.05526, 2017): poisoned samples are blended with a fixed
pattern and relabelled to the target.
"""

from __future__ import annotations

from flowerbed.clients.attack import Attack, PoisonTrainingParams
from flowerbed.platform.registry import ATTACKS


@ATTACKS.register("blended")
class Blended(Attack):
    """Blend the trigger pattern (default: seeded noise, alpha 0.2) into ``poison_fraction`` of each batch."""

    name = "blended"
    Params = PoisonTrainingParams
    default_trigger = "blend"
