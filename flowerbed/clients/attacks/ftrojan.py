"""FTrojan: frequency-domain backdoor.

Wang et al., "An Invisible Black-box Backdoor Attack through Frequency Domain"
(ECCV 2022, arXiv:2111.10991): dirty-label poisoning with an invisible trigger
made of fixed DCT-coefficient changes in the YUV chroma channels (the
``frequency`` trigger). The reference code poisons 2% of the training data
(5% in one configuration); here the run's ``attack.poison-fraction`` of each
attacker batch is poisoned.
"""

from __future__ import annotations

from flowerbed.clients.attack import Attack, PoisonTrainingParams
from flowerbed.platform.registry import ATTACKS


@ATTACKS.register("ftrojan")
class FTrojan(Attack):
    """Apply the frequency trigger to ``poison_fraction`` of each batch."""

    name = "ftrojan"
    Params = PoisonTrainingParams
    default_trigger = "frequency"
