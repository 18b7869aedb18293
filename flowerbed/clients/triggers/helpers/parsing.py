"""Parsing of list-valued trigger parameters.

Run-config values are flat scalars, so lists travel as comma-separated strings.
"""

from __future__ import annotations


def parse_int_list(text: str, *, parameter: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``; a bad entry raises ValueError naming ``parameter``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"{parameter}: expected comma-separated integers, got '{text}'") from error
    if not values:
        raise ValueError(f"{parameter}: expected at least one integer, got '{text}'")
    return values


def parse_positions(text: str, *, parameter: str) -> list[tuple[int, int]]:
    """``"15:15,31:31"`` -> ``[(15, 15), (31, 31)]`` (vertical u : horizontal v frequency)."""
    positions = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        u, sep, v = part.partition(":")
        try:
            if not sep:
                raise ValueError
            positions.append((int(u), int(v)))
        except ValueError as error:
            raise ValueError(f"{parameter}: expected 'u:v' pairs separated by commas, got '{text}'") from error
    if not positions:
        raise ValueError(f"{parameter}: expected at least one 'u:v' position, got '{text}'")
    if len(set(positions)) != len(positions):
        raise ValueError(f"{parameter}: positions repeat in '{text}'")
    return positions
