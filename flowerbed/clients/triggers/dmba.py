"""DMBA multi-channel dispersed frequency trigger.

Liu et al., "Act in Collusion: A Persistent Distributed Multi-Target Backdoor
in Federated Learning" (arXiv:2411.03926). Each colluding attacker perturbs DCT
coefficients of a *different colour channel* at *different frequencies*, so the
attackers' triggers are distinct (less parameter conflict) and invisible.
The paper's code is not public; the assignment rule below is ours.

Assignment rule for attacker ``index`` of ``count`` (deterministic, so every
attacker and the server derive the same table from ``count`` alone):

1. Channel: round-robin over the channel pool (default R, G, B):
   ``channel = pool[index % len(pool)]``. With more attackers than channels a
   channel is reused, by attackers whose positions are disjoint (step 3).
2. Candidates: the window's mid/high-frequency coefficients, i.e. positions
   ``(u, v)`` with ``u + v >= min-frequency`` (default half the window side);
   low frequencies carry the image content and would show.
3. Positions: greedy farthest-point (max-min distance) sampling picks
   ``count * positions-per-attacker`` distinct candidates, starting from the
   highest frequency ``(b-1, b-1)`` (FTrojan's choice); each next pick is the
   candidate whose Euclidean distance in (u, v) to all picks so far is largest
   (ties: higher u + v, then lower u, then lower v). Pick ``k`` goes to attacker
   ``k % count``, so every attacker's set is disjoint from every other
   attacker's and spread across the band (the first ``count`` picks, one per
   attacker, are the most mutually distant). Distinct DCT positions are
   orthogonal patterns, and far-apart frequencies stay distinguishable after
   blur or resampling.

Each attacker then adds ``magnitude / 255`` (magnitude on the 0-255 scale) to
its coefficients in every ``window x window`` block of its channel, inverts the
DCT and clips to [0, 1]. Defaults (inferred; the paper's values were not available):
8x8 blocks (JPEG-like), 2 positions per attacker, magnitude 30 (FTrojan).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from flowerbed.clients.triggers.base import Trigger, TriggerParams
from flowerbed.clients.triggers.helpers.dct import check_window
from flowerbed.clients.triggers.helpers.parsing import parse_int_list
from flowerbed.clients.triggers.helpers.spectral import edit_coefficients
from flowerbed.platform.registry import TRIGGERS


class DMBAParams(TriggerParams):
    window: int = Field(8, ge=0, description="DCT block size b (must divide H and W); 0 = the whole image.")
    positions_per_attacker: int = Field(
        2, alias="positions-per-attacker", ge=1, description="DCT coefficients each attacker perturbs per block."
    )
    min_frequency: int | None = Field(
        None, alias="min-frequency", ge=0, description="Lowest u + v a position may have; default = window side // 2."
    )
    magnitude: float = Field(30.0, description="Coefficient change on the 0-255 scale (applied as magnitude/255).")
    channels: str = Field("", description="Channel pool, comma-separated, assigned round-robin; empty = all (R,G,B).")


def dmba_assignment(
    count: int,
    window: tuple[int, int],
    positions_per_attacker: int,
    min_frequency: int,
    channel_pool: list[int],
) -> list[tuple[int, list[tuple[int, int]]]]:
    """(channel, positions) for every attacker ``0..count-1`` (see the module docstring)."""
    bh, bw = window
    u, v = torch.meshgrid(torch.arange(bh), torch.arange(bw), indexing="ij")
    candidates = torch.stack([u.flatten(), v.flatten()], dim=1)
    candidates = candidates[candidates.sum(dim=1) >= min_frequency]
    needed = count * positions_per_attacker
    if needed > len(candidates):
        raise ValueError(
            f"positions-per-attacker: {count} attackers x {positions_per_attacker} positions need {needed} "
            f"coefficients, but a {bh}x{bw} window has only {len(candidates)} with u+v >= {min_frequency} "
            f"(lower min-frequency or positions-per-attacker, or enlarge window)"
        )
    # Order candidates by the tie-break rule so argmax (first maximum) applies it.
    order = sorted(range(len(candidates)), key=lambda i: (-int(candidates[i].sum()), int(candidates[i, 0]), int(candidates[i, 1])))
    candidates = candidates[order]
    # Integer squared distances keep ties exact.
    min_sq_distance = torch.full((len(candidates),), torch.iinfo(torch.int64).max, dtype=torch.int64)
    picks: list[tuple[int, int]] = []
    for _ in range(needed):
        best = int(torch.argmax(min_sq_distance))
        picks.append((int(candidates[best, 0]), int(candidates[best, 1])))
        sq_distance = (candidates - candidates[best]).pow(2).sum(dim=1)
        min_sq_distance = torch.minimum(min_sq_distance, sq_distance)
        min_sq_distance[best] = -1  # never pick twice
    return [
        (channel_pool[index % len(channel_pool)], picks[index::count])
        for index in range(count)
    ]


@TRIGGERS.register("dmba")
class DMBATrigger(Trigger):
    """Attacker ``index`` of ``count``: its own channel and disjoint, spread-out DCT positions."""

    name = "dmba"
    Params = DMBAParams

    def __init__(self, params=None, *, index=0, count=1, image_shape, seed=0) -> None:
        super().__init__(params, index=index, count=count, image_shape=image_shape, seed=seed)
        channels_in, height, width = self.image_shape
        p = self.params
        self.window = (height, width) if p.window == 0 else (p.window, p.window)
        check_window(self.window, height, width, parameter="window")
        pool = parse_int_list(p.channels, parameter="channels") if p.channels.strip() else list(range(channels_in))
        if any(not 0 <= c < channels_in for c in pool) or len(set(pool)) != len(pool):
            raise ValueError(f"channels: need distinct indices in [0, {channels_in - 1}], got '{p.channels}'")
        min_frequency = p.min_frequency if p.min_frequency is not None else min(self.window) // 2
        self.assignment = dmba_assignment(count, self.window, p.positions_per_attacker, min_frequency, pool)
        self.channel, self.positions = self.assignment[index]
        # The trigger is linear: x -> clamp(x + delta), delta = the change made to a black image.
        zeros = torch.zeros(1, *self.image_shape, dtype=torch.float64)
        self.delta = self.transform(zeros) - zeros

    def apply(self, images: Tensor) -> Tensor:
        self.check_images(images)
        return (images + self.delta.to(images.device, images.dtype)).clamp_(0.0, 1.0)

    def transform(self, images: Tensor) -> Tensor:
        """The unclamped trigger computed the long way (DCT, edit, inverse DCT)."""
        return edit_coefficients(
            images,
            channels=[self.channel],
            window=self.window,
            positions=self.positions,
            value=self.params.magnitude / 255.0,
            mode="add",
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "channel": self.channel,
            "window": list(self.window),
            "positions": [list(p) for p in self.positions],
            "magnitude_0_255": self.params.magnitude,
            "coefficient_change_0_1": self.params.magnitude / 255.0,
            "all_attackers": [{"channel": c, "positions": [list(p) for p in pos]} for c, pos in self.assignment],
        }
