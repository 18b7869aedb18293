"""Local Flow Matching (Xu, Cheng & Xie, arXiv:2410.02548) as the ``lfm`` workload.

A chain of small flow-matching blocks, each matching one short Ornstein-Uhlenbeck step from
data towards N(0, I), trained one after another; sampling runs the chain backwards, either by
ODE integration or through one-step distilled maps.
"""

from flowerbed.extensions.lfm.chain import LocalFlowChain
from flowerbed.extensions.lfm.workload import LocalFlowMatchingParams, LocalFlowMatchingWorkload

__all__ = ["LocalFlowChain", "LocalFlowMatchingParams", "LocalFlowMatchingWorkload"]
