"""Hyper-parameters of a strategy: one frozen pydantic model per defence.

The run config carries them as flat keys ``strategy.<name>.<param>``; every
error raised here names that key, so a bad value fails before round 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class StrategyParams(BaseModel):
    """Base of every strategy's ``Params`` (fields use hyphenated aliases)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def parse_params(
    strategy: str, params_class: type[StrategyParams], params: StrategyParams | Mapping[str, Any] | None
) -> StrategyParams:
    """Validate ``params`` (an instance, a mapping of aliases/names, or None for defaults)."""
    if params is None:
        return params_class()
    if isinstance(params, params_class):
        return params
    if not isinstance(params, Mapping):
        raise TypeError(
            f"strategy.{strategy}: expected {params_class.__qualname__} or a mapping, got {type(params).__name__}"
        )
    try:
        return params_class.model_validate(dict(params))
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(params)"
        raise ValueError(f"strategy.{strategy}.{key}: {first['msg']} (got {first.get('input')!r})") from error


def param_error(strategy: str, params_class: type[StrategyParams], field: str, message: str) -> ValueError:
    """A ValueError naming the run-config key of ``field``."""
    alias = params_class.model_fields[field].alias or field
    return ValueError(f"strategy.{strategy}.{alias}: {message}")
