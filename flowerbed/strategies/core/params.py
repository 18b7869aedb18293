"""Hyper-parameters of a strategy: one frozen pydantic model per defence.

The run config carries them as flat keys ``strategy.<name>.<param>``; every
error raised here names that key, so a bad value fails before round 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from flowerbed.platform.plugin_params import coerce_params


class StrategyParams(BaseModel):
    """Base of every strategy's ``Params`` (fields use hyphenated aliases)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


def parse_params(
    strategy: str, params_class: type[StrategyParams], params: StrategyParams | Mapping[str, Any] | None
) -> StrategyParams:
    """Validate ``params`` (an instance, a mapping of aliases/names, or None for defaults)."""
    return coerce_params(f"strategy.{strategy}", params_class, params)


def param_error(strategy: str, params_class: type[StrategyParams], field: str, message: str) -> ValueError:
    """A ValueError naming the run-config key of ``field``."""
    alias = params_class.model_fields[field].alias or field
    return ValueError(f"strategy.{strategy}.{alias}: {message}")
