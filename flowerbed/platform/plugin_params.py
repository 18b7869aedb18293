"""Plugins' hyper-parameters: from what a constructor was given, and from the run config.

Attacks, triggers, strategies and workloads each declare a pydantic ``Params`` model whose
fields carry the hyphenated run-config names; in the run config they are the keys
``<kind>.<plugin>.<param>``. Constructors accept an instance, a mapping of those names, or
None (the defaults); :func:`coerce_params` turns any of them into a validated instance, and
a bad value into an error that names the run-config key (``attack.badnets.poison-epochs: ...``).
The rest of this module reads, checks and lists those keys for the run config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from flowerbed.platform.errors import describe_error
from flowerbed.platform.registry import ATTACKS, STRATEGIES, TRIGGERS, WORKLOADS, Registry, RegistryError

ParamsT = TypeVar("ParamsT", bound=BaseModel)


def coerce_params(prefix: str, params_class: type[ParamsT], params: BaseModel | Mapping[str, Any] | None) -> ParamsT:
    """Validate ``params`` against ``params_class``; errors start with the key prefix (``strategy.krum``)."""
    if params is None:
        return params_class()
    if isinstance(params, params_class):
        return params
    if not isinstance(params, Mapping):
        raise TypeError(f"{prefix}: expected {params_class.__qualname__} or a mapping, got {type(params).__name__}")
    try:
        return params_class.model_validate(dict(params))
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(params)"
        raise ValueError(f"{prefix}.{key}: {first['msg']} (got {first.get('input')!r})") from error


# ----------------------------------------------------------------------------- run-config keys
# A plugin's parameters are the run-config keys ``<kind>.<plugin key>.<param>``.

PLUGIN_KINDS: dict[str, Registry] = {
    "strategy": STRATEGIES,
    "attack": ATTACKS,
    "trigger": TRIGGERS,
    "workload": WORKLOADS,
}


def plugin_key(name: str, cls: Any) -> str:
    """The key prefix of a plugin's parameters: its registered name, or, for one named by
    import path (``my_attacks:MyAttack``), the class's ``name`` (``attack.my-attack.*``)."""
    if ":" in name:
        return getattr(cls, "name", None) or name
    return name


def params_model(cls: Any) -> type[BaseModel]:
    """The plugin class's ``Params`` model (an empty, strict one if it declares none)."""
    params = getattr(cls, "Params", None)
    if params is None:

        class NoParams(BaseModel):
            model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)

        return NoParams
    return params


def validate_params(model: type[BaseModel], raw: dict[str, Any]) -> BaseModel:
    """Validate a plugin's parameters. Flower's config has no null, so ``""`` stands for
    "unset" where the parameter's default is None."""
    cleaned = dict(raw)
    for field_name, info in model.model_fields.items():
        key = info.alias or field_name
        if info.default is None and cleaned.get(key) == "":
            del cleaned[key]
    return model.model_validate(cleaned)


def params_of(config: Any, kind: str, name: str) -> BaseModel:
    """The validated ``Params`` of plugin ``name`` of ``kind`` in the run config ``config``,
    read from the keys ``<kind>.<plugin_key(name)>.*``."""
    cls = PLUGIN_KINDS[kind].get(name)
    raw = getattr(config, kind).options().get(plugin_key(name, cls), {})
    return validate_params(params_model(cls), raw)


def registered_defaults() -> dict[str, Any]:
    """``<kind>.<name>.<param>`` -> default, for every registered plugin ("" for None)."""
    flat: dict[str, Any] = {}
    for kind, registry in PLUGIN_KINDS.items():
        for name in registry.names():
            params = params_model(registry.get(name))()
            for key, value in params.model_dump(by_alias=True, mode="json").items():
                flat[f"{kind}.{name}.{key}"] = "" if value is None else value
    return flat


def imported_plugins(config: Any, kind: str) -> dict[str, Any]:
    """The plugins of ``kind`` this run names by import path, by their key prefix."""
    imported = {}
    for name in config.selected_plugins(kind):
        if ":" in name:
            try:
                cls = PLUGIN_KINDS[kind].get(name)
            except RegistryError:
                continue  # reported with the other names
            imported[plugin_key(name, cls)] = cls
    return imported


def plugin_table_problems(config: Any) -> list[str]:
    """Every problem with the ``<kind>.<plugin>.*`` tables of ``config``, each naming its key."""
    problems = []
    for kind, registry in PLUGIN_KINDS.items():
        options = getattr(config, kind).options()
        imported = imported_plugins(config, kind)
        for key, cls in imported.items():
            if key in registry and params_model(registry.get(key)) is not params_model(cls):
                problems.append(
                    f"key '{kind}.name': the imported {registry.kind} {cls.__module__}.{cls.__qualname__} is named"
                    f" '{key}' like a registered one with other parameters, so the keys '{kind}.{key}.*'"
                    " would be ambiguous; give it its own name"
                )
        for plugin, params in options.items():
            if not isinstance(params, dict):
                problems.append(f"unknown key '{kind}.{plugin}'")
                continue
            if plugin not in registry and plugin not in imported:
                problems.append(
                    f"unknown key prefix '{kind}.{plugin}': no {registry.kind} named '{plugin}'"
                    f" (registered: {', '.join(registry.names())}"
                    f"{''.join(f', {key} (imported)' for key in imported if key not in registry)})"
                )
                continue
            try:
                validate_params(params_model(imported.get(plugin) or registry.get(plugin)), params)
            except ValidationError as error:
                problems += [describe_error(e, f"{kind}.{plugin}.") for e in error.errors()]
    return problems
