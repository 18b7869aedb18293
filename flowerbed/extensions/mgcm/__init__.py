"""MGCM: modular gradient-conflict mitigation for multi-task simultaneous ST (arXiv:2409.15911)."""

from flowerbed.extensions.mgcm.memory import measure_peak_allocation
from flowerbed.extensions.mgcm.partition import ModuleGroup, ModulePartition, default_unit_rule
from flowerbed.extensions.mgcm.surgery import (
    MITIGATIONS,
    ConflictReport,
    GradientSurgery,
    conflict_report,
    mitigate,
    project_model_level,
    project_module_level,
)
from flowerbed.extensions.mgcm.workload import MGCMParams, MGCMWorkload

__all__ = [
    "MITIGATIONS",
    "ConflictReport",
    "GradientSurgery",
    "MGCMParams",
    "MGCMWorkload",
    "ModuleGroup",
    "ModulePartition",
    "conflict_report",
    "default_unit_rule",
    "measure_peak_allocation",
    "mitigate",
    "project_model_level",
    "project_module_level",
]
