"""GMF: Generalized Multimodal Fusion via the Poisson-Nernst-Planck equation (Xiong et al., arXiv:2410.15475).

A light frontend that dissociates each modality's features into modality-specific
and modality-invariant subspaces, usable in front of any stream-fusion backend,
packaged as the ``gmf`` workload.
"""

from flowerbed.extensions.gmf.attention_fusion import AttentionFusion
from flowerbed.extensions.gmf.concat_fusion import ConcatFusion
from flowerbed.extensions.gmf.frontend import GMFFrontend, GMFOutput
from flowerbed.extensions.gmf.model import FUSIONS, FusionClassifier, FusionOutput, build_fusion_classifier
from flowerbed.extensions.gmf.workload import GMFParams, GMFWorkload

__all__ = [
    "FUSIONS",
    "AttentionFusion",
    "ConcatFusion",
    "FusionClassifier",
    "FusionOutput",
    "GMFFrontend",
    "GMFOutput",
    "GMFParams",
    "GMFWorkload",
    "build_fusion_classifier",
]
