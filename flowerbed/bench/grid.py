"""The grid file of ``flowerbed bench``: a TOML file of attacks × defences × seeds.

:func:`read_grid` parses and checks its structure into a :class:`Grid` of
:class:`Cell` s (the format is described in :mod:`flowerbed.bench.command`);
:func:`select_cells` is the ``--only`` filter.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowerbed.bench.pretraining import pretrained_weights
from flowerbed.platform.config import ConfigError, flatten

GRID_KEYS = ("name", "seeds", "pretrain-rounds", "base", "attacks", "defences")
# Run keys the bench sets itself for every cell.
CELL_KEYS = ("output-dir", "experiment", "resume", "seed")
NO_ATTACK = "none"
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*(_[A-Za-z0-9.\-]+)*$")  # no "__", no "/", no spaces


@dataclass(frozen=True)
class Cell:
    """One experiment of the grid: an attack, a defence, a seed, and its run keys."""

    attack: str
    defence: str
    seed: int
    overrides: dict[str, Any] = field(compare=False, hash=False)
    pretrained: bool = field(default=False, compare=False, hash=False)

    @property
    def name(self) -> str:
        return f"{self.attack}__{self.defence}__seed{self.seed}"

    def flat_config(self, cell_dir: Path) -> dict[str, Any]:
        """The cell's flat run config, writing its run folder under ``cell_dir``."""
        flat = {**self.overrides, "seed": self.seed, "output-dir": str(cell_dir), "experiment": self.name}
        if self.pretrained:  # cell_dir is <out>/cells/<name>
            flat["model.init"] = str(pretrained_weights(cell_dir.parent.parent, self.seed))
        return flat


@dataclass
class Grid:
    name: str
    base: dict[str, Any]
    attacks: dict[str, dict[str, Any]]
    defences: dict[str, dict[str, Any]]
    seeds: list[int]
    source: str = ""
    pretrain_rounds: int = 0

    def cells(self) -> list[Cell]:
        """Every cell, attack-major then defence then seed (the order they run in)."""
        return [
            Cell(attack, defence, seed, {**self.base, **attack_keys, **defence_keys}, pretrained=self.pretrain_rounds > 0)
            for attack, attack_keys in self.attacks.items()
            for defence, defence_keys in self.defences.items()
            for seed in self.seeds
        ]

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "attacks": list(self.attacks),
            "defences": list(self.defences),
            "seeds": list(self.seeds),
            "pretrain_rounds": self.pretrain_rounds,
            "cells": [
                {"name": c.name, "attack": c.attack, "defence": c.defence, "seed": c.seed, "overrides": c.overrides}
                for c in self.cells()
            ],
        }


def read_grid(path: str | Path) -> Grid:
    """Parse a grid TOML file; structural problems raise :class:`ConfigError` naming the key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"grid file {path} does not exist"])
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"grid file {path} is not valid TOML: {error}"]) from None
    return parse_grid(data, default_name=path.stem, source=str(path))


def parse_grid(data: dict[str, Any], default_name: str = "bench", source: str = "") -> Grid:
    """A grid from a parsed TOML mapping (see the module docstring for the format)."""
    from flowerbed.platform.registry import ATTACKS

    problems: list[str] = []
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        problems.append(f"unknown grid key(s) {', '.join(repr(k) for k in unknown)} (allowed: {', '.join(GRID_KEYS)})")

    name = data.get("name", default_name)
    if not isinstance(name, str) or not LABEL_PATTERN.match(name):
        problems.append(f"grid key 'name': {name!r} must be a simple name (letters, digits, '.', '-', '_')")

    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        problems.append(f"grid key 'seeds': expected a non-empty list of distinct integers, got {seeds!r}")
        seeds = []

    pretrain_rounds = data.get("pretrain-rounds", 0)
    if not isinstance(pretrain_rounds, int) or isinstance(pretrain_rounds, bool) or pretrain_rounds < 0:
        problems.append(f"grid key 'pretrain-rounds': expected a whole number >= 0, got {pretrain_rounds!r}")
        pretrain_rounds = 0

    base = data.get("base", {})
    if not isinstance(base, dict):
        problems.append("grid key 'base': expected a table of run keys")
        base = {}
    base = flatten(base)
    problems += _controlled_keys(base, "base", pretrain_rounds)

    raw_attacks = data.get("attacks", {NO_ATTACK: {}})
    attacks: dict[str, dict[str, Any]] = {}
    if isinstance(raw_attacks, list):
        raw_attacks = {label: {} for label in raw_attacks} if all(isinstance(a, str) for a in raw_attacks) else None
    if not isinstance(raw_attacks, dict) or not raw_attacks:
        problems.append("grid key 'attacks': expected [attacks.<label>] tables of run keys (or a list of labels)")
        raw_attacks = {}
    for label, keys in raw_attacks.items():
        if not isinstance(keys, dict):
            problems.append(f"grid key 'attacks.{label}': expected a table of run keys")
            continue
        keys = flatten(keys)
        problems += _controlled_keys(keys, f"attacks.{label}", pretrain_rounds)
        if label == NO_ATTACK:
            keys.setdefault("attack.num-attackers", 0)
        elif "attack.name" not in keys and label in ATTACKS:
            keys["attack.name"] = label
        attacks[label] = keys

    raw_defences = data.get("defences", ["fedavg"])
    defences: dict[str, dict[str, Any]] = {}
    if isinstance(raw_defences, list) and all(isinstance(d, str) for d in raw_defences):
        if len(set(raw_defences)) != len(raw_defences):
            problems.append("grid key 'defences': a defence is listed twice")
        raw_defences = {label: {} for label in raw_defences}
    if not isinstance(raw_defences, dict) or not raw_defences:
        problems.append("grid key 'defences': expected a list of strategy names or [defences.<label>] tables")
        raw_defences = {}
    for label, keys in raw_defences.items():
        if not isinstance(keys, dict):
            problems.append(f"grid key 'defences.{label}': expected a table of run keys")
            continue
        keys = flatten(keys)
        problems += _controlled_keys(keys, f"defences.{label}", pretrain_rounds)
        keys.setdefault("strategy.name", label)
        defences[label] = keys

    for kind, labels in (("attacks", attacks), ("defences", defences)):
        for label in labels:
            if not LABEL_PATTERN.match(label):
                problems.append(
                    f"grid key '{kind}.{label}': a label must be letters, digits, '.', '-' or single '_' (it names folders)"
                )
    if problems:
        raise ConfigError(problems)
    return Grid(
        name=name,
        base=base,
        attacks=attacks,
        defences=defences,
        seeds=list(seeds),
        source=source,
        pretrain_rounds=pretrain_rounds,
    )


def _controlled_keys(keys: dict[str, Any], where: str, pretrain_rounds: int = 0) -> list[str]:
    controlled = CELL_KEYS + (("model.init",) if pretrain_rounds else ())
    return [
        f"grid key '{where}.{key}': the bench sets '{key}' for every cell"
        + (" (list seeds in the top-level 'seeds')" if key == "seed" else "")
        + (" (it starts from the grid's pre-training: drop 'pretrain-rounds' to set it)" if key == "model.init" else "")
        for key in keys
        if key in controlled
    ]


def select_cells(cells: list[Cell], only: str | None, grid: Grid, option: str = "--only") -> list[Cell]:
    """Filter cells by ``attack=a,b,defence=c,seed=0``: a bare item adds a value to the previous key.

    ``option`` names the command-line option the filter came from, in error messages.
    """
    if not only:
        return cells
    wanted: dict[str, set[str]] = {}
    key = None
    for item in (part.strip() for part in only.split(",")):
        if not item:
            continue
        if "=" in item:
            key, value = (part.strip() for part in item.split("=", 1))
            if key not in ("attack", "defence", "seed"):
                raise ConfigError([f"{option}: unknown key '{key}' (use attack=, defence=, seed=)"])
        elif key is None:
            raise ConfigError([f"{option} '{only}': expected key=value items (attack=..., defence=..., seed=...)"])
        else:
            value = item
        wanted.setdefault(key, set()).add(value)
    known = {"attack": set(grid.attacks), "defence": set(grid.defences), "seed": {str(s) for s in grid.seeds}}
    problems = [
        f"{option} {key}={value}: not in the grid (grid has: {', '.join(sorted(known[key]))})"
        for key, values in wanted.items()
        for value in sorted(values - known[key])
    ]
    if problems:
        raise ConfigError(problems)
    return [
        cell
        for cell in cells
        if all(str(getattr(cell, key)) in values for key, values in wanted.items())
    ]
