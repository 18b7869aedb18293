"""Workloads of the backdoor setting (image classification); importing this package
registers them, their datasets and their models."""

import importlib
import pkgutil

for _module in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
    importlib.import_module(_module.name)
