"""The error every bad run config raises, and how a pydantic error becomes one of its lines."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """An invalid run config. ``str()`` lists every problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid run config:\n  - " + "\n  - ".join(problems))


def describe_error(error: dict[str, Any], prefix: str = "") -> str:
    """One pydantic validation error as a line naming its run-config key (``prefix`` + location)."""
    key = prefix + ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"key '{key}': {error['msg']} (got {error.get('input')!r})"
