"""Self-TPT (Zhu et al., "Efficient Test-Time Prompt Tuning for Vision-Language Models",
arXiv:2408.05775) as the ``self-tpt`` workload: CoOp prompt learning on a frozen CLIP with
Contrastive Prompt Tuning and gradient matching, adapted to new classes once by CPT.
"""

from flowerbed.extensions.self_tpt.workload import SelfTPTParams, SelfTPTWorkload

__all__ = ["SelfTPTParams", "SelfTPTWorkload"]
