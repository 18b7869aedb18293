"""Server side: aggregation rules and defences, one file each.

Importing this package imports every module below it, so each one's
@REGISTRY.register(...) runs and the platform can find it by name.
"""

import importlib
import pkgutil

for _module in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
    importlib.import_module(_module.name)
