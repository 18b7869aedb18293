"""A plugin's hyper-parameters from what its constructor was given.

Attacks, triggers and strategies each declare a pydantic ``Params`` model whose
fields carry the hyphenated run-config names. Their constructors accept an
instance, a mapping of those names, or None (the defaults); this turns any of
them into a validated instance, and a bad value into an error that names the
run-config key (``attack.badnets.poison-epochs: ...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

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
