"""The errors a run ends with: a bad run config (before anything starts) and a failed run."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """An invalid run config. ``str()`` lists every problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = [one_line(problem) for problem in problems]
        super().__init__("invalid run config:\n  - " + "\n  - ".join(self.problems))


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (a key the user typed may hold a newline)."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class RunFailed(RuntimeError):
    """A run that could not go on: too many failed clients, or a global model lost to NaN/Inf.
    Its rounds so far are in the run folder's ``metrics.jsonl``, the last one with ``stopped``."""


class RunFolderError(ValueError):
    """A folder that is not a readable run folder (``flowerbed report`` on the wrong path)."""


def describe_error(error: dict[str, Any], prefix: str = "") -> str:
    """One pydantic validation error as a line naming its run-config key (``prefix`` + location)."""
    key = prefix + ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"key '{key}': {error['msg']} (got {error.get('input')!r})"
