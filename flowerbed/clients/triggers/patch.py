"""BadNets patch trigger.

Gu et al., "BadNets: Identifying Vulnerabilities in the Machine Learning Model
Supply Chain" (arXiv:1708.06733, 2017): a small square stamped at a fixed
location (a corner by default) on every channel. With ``location="per-attacker"``
attacker ``index`` of a run's patch attackers takes corner ``index mod 4`` (top-left,
top-right, bottom-left, bottom-right), so several single-target attackers get
distinct, non-overlapping patches from one shared config.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from flowerbed.clients.triggers.base import Trigger, TriggerParams
from flowerbed.platform.registry import TRIGGERS

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


class PatchParams(TriggerParams):
    size: int = Field(3, ge=1, description="Side of the square patch in pixels.")
    pattern: Literal["square", "checkerboard"] = Field(
        "checkerboard",
        description="'square': every patch pixel = value; 'checkerboard': pixels alternate value and 1 - value.",
    )
    location: Literal["top-left", "top-right", "bottom-left", "bottom-right", "per-attacker", "xy"] = Field(
        "bottom-right",
        description="A corner (offset by margin); 'per-attacker': corner index mod 4 in the order "
        "top-left, top-right, bottom-left, bottom-right; or 'xy' to place the top-left pixel at (x, y).",
    )
    margin: int = Field(1, ge=0, description="Distance in pixels from the chosen corner.")
    x: int | None = Field(None, ge=0, description="Column of the patch's top-left pixel (location='xy' only).")
    y: int | None = Field(None, ge=0, description="Row of the patch's top-left pixel (location='xy' only).")
    value: float = Field(1.0, ge=0.0, le=1.0, description="Patch intensity in [0, 1].")

    @model_validator(mode="after")
    def _xy_only_with_xy_location(self) -> PatchParams:
        if self.location == "xy" and (self.x is None or self.y is None):
            raise ValueError("location='xy' needs both x and y")
        if self.location != "xy" and (self.x is not None or self.y is not None):
            raise ValueError(f"x/y are only used with location='xy' (location is '{self.location}')")
        return self


def patch_origin(params: PatchParams, height: int, width: int, index: int = 0) -> tuple[int, int]:
    """(row, col) of the patch's top-left pixel (``index``: the attacker's index, used by
    ``location="per-attacker"``); ValueError naming the parameter if it does not fit."""
    size = params.size
    location = CORNERS[index % len(CORNERS)] if params.location == "per-attacker" else params.location
    if location == "xy":
        row, col = int(params.y), int(params.x)  # type: ignore[arg-type]
    else:
        row = params.margin if location.startswith("top") else height - params.margin - size
        col = params.margin if location.endswith("left") else width - params.margin - size
    if row < 0 or col < 0:
        raise ValueError(f"size/margin: a {size}px patch with margin {params.margin} does not fit a {height}x{width} image")
    if row + size > height:
        raise ValueError(f"y: patch rows {row}..{row + size - 1} exceed the image height {height}")
    if col + size > width:
        raise ValueError(f"x: patch columns {col}..{col + size - 1} exceed the image width {width}")
    return row, col


@TRIGGERS.register("patch")
class PatchTrigger(Trigger):
    """Stamp a square (plain or checkerboard) patch on all channels."""

    name = "patch"
    Params = PatchParams

    def __init__(self, params=None, *, index=0, count=1, image_shape, seed=0) -> None:
        super().__init__(params, index=index, count=count, image_shape=image_shape, seed=seed)
        _, height, width = self.image_shape
        size = self.params.size
        self.origin = patch_origin(self.params, height, width, self.index)
        row, col = self.origin
        self.mask = torch.zeros(1, 1, height, width, dtype=torch.bool)
        self.mask[..., row : row + size, col : col + size] = True
        tile = torch.full((size, size), self.params.value)
        if self.params.pattern == "checkerboard":
            parity = (torch.arange(size).unsqueeze(1) + torch.arange(size).unsqueeze(0)) % 2 == 1
            tile[parity] = 1.0 - self.params.value
        self.pattern = torch.zeros(1, 1, height, width)
        self.pattern[..., row : row + size, col : col + size] = tile

    def apply(self, images: Tensor) -> Tensor:
        self.check_images(images)
        mask = self.mask.to(images.device)
        pattern = self.pattern.to(images.device, images.dtype)
        return torch.where(mask, pattern, images).clamp_(0.0, 1.0)

    def describe(self) -> dict[str, Any]:
        row, col = self.origin
        return {**super().describe(), "row": row, "col": col, "size": self.params.size}
