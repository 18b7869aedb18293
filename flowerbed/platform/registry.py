"""Name -> class registries.

The platform knows attacks, triggers, defences and extensions only through these
registries, so adding one is a new file plus a ``@REGISTRY.register("name")``.
A name may also be an import path ``package.module:Attribute`` for user code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# Packages whose import fills the registries (each registers its members on import).
PLUGIN_PACKAGES = (
    "flowerbed.platform.partitioning",
    "flowerbed.workloads",
    "flowerbed.strategies",
    "flowerbed.clients",
    "flowerbed.extensions",
)


class RegistryError(LookupError):
    """An unknown name or an import path that does not resolve."""


class Registry(Generic[T]):
    """A named collection of classes (or factories) of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@ATTACKS.register("badnets")``."""

        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Look up a registered name, or import ``package.module:Attribute``."""
        load_plugins()
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return _import_path(name, self.kind)
        raise RegistryError(
            f"unknown {self.kind} '{name}'; registered: {', '.join(self.names()) or '(none)'}"
            f" (or give an import path 'package.module:Class')"
        )

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._entries

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)


def import_user_module(module_name: str, what: str):
    """Import a user's module (an import-path plugin, or one listed in ``plugins``)."""
    load_plugins()  # built-ins first, so a user module that reuses their names is the one that fails
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        hint = ""
        if isinstance(error, ModuleNotFoundError) and error.name == module_name.split(".")[0]:
            hint = (
                "; its folder must be on PYTHONPATH (e.g. `PYTHONPATH=. flowerbed run ...`),"
                " or, with `flwr run`, in the Flower app directory"
            )
        raise RegistryError(f"{what}: cannot import module '{module_name}' ({error}){hint}") from error
    except Exception as error:  # the module itself failed (e.g. registered a name twice)
        raise RegistryError(f"{what}: importing module '{module_name}' failed: {type(error).__name__}: {error}") from error


def _import_path(path: str, kind: str):
    module_name, _, attribute = path.partition(":")
    module = import_user_module(module_name, f"{kind} '{path}'")
    try:
        return getattr(module, attribute)
    except AttributeError as error:
        raise RegistryError(f"{kind} '{path}': module '{module_name}' has no '{attribute}'") from error


_plugins_loaded = False


def load_plugins() -> None:
    """Import the packages that register attacks, defences and extensions (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for package in PLUGIN_PACKAGES:
        importlib.import_module(package)


DATASETS: Registry = Registry("dataset")
PARTITIONERS: Registry = Registry("partitioner")
MODELS: Registry = Registry("model")
WORKLOADS: Registry = Registry("workload")
STRATEGIES: Registry = Registry("strategy")
ATTACKS: Registry = Registry("attack")
TRIGGERS: Registry = Registry("trigger")
