"""DBA distributed trigger.

Xie et al., "DBA: Distributed Backdoor Attacks against Federated Learning"
(ICLR 2020): a global pattern is decomposed into local pieces; attacker ``i``
poisons with piece ``i`` only, while the server also measures the assembled
global pattern (the ``dba-global`` backdoor, built by the attack plan from
:meth:`DBATrigger.global_trigger`). The defaults are the authors' CIFAR layout
(AI-secure/DBA, ``utils/cifar_params.yaml``): pieces are 1x6 bars, 3 px apart,
in a 2-column grid from the top-left corner (rows 0 and 4, columns 0-5 and 9-14
for four attackers). Their MNIST layout is ``piece-width = 4``, ``gap = 2``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import Tensor

from flowerbed.clients.triggers.base import Trigger, TriggerParams
from flowerbed.platform.registry import TRIGGERS


class DBAParams(TriggerParams):
    piece_height: int = Field(1, alias="piece-height", ge=1, description="Rows of one local piece (DBA: 1).")
    piece_width: int = Field(6, alias="piece-width", ge=1, description="Columns of one local piece (DBA CIFAR: 6).")
    gap: int = Field(3, ge=0, description="Pixels between neighbouring pieces, across and down (DBA CIFAR: 3).")
    columns: int | None = Field(
        None, ge=1, description="Pieces per grid row; default ceil(sqrt(count)) (2 for DBA's 4 pieces)."
    )
    x: int = Field(0, ge=0, description="Column of the global pattern's top-left pixel.")
    y: int = Field(0, ge=0, description="Row of the global pattern's top-left pixel.")
    value: float = Field(1.0, ge=0.0, le=1.0, description="Intensity of trigger pixels in [0, 1].")


def piece_boxes(params: DBAParams, count: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(row, col, height, width) of each of the ``count`` pieces, laid out on a grid."""
    columns = params.columns or math.ceil(math.sqrt(count))
    boxes = []
    for piece in range(count):
        grid_row, grid_col = divmod(piece, columns)
        row = params.y + grid_row * (params.piece_height + params.gap)
        col = params.x + grid_col * (params.piece_width + params.gap)
        if row + params.piece_height > height:
            raise ValueError(f"y/piece-height/gap: DBA piece {piece} (rows from {row}) exceeds the image height {height}")
        if col + params.piece_width > width:
            raise ValueError(f"x/piece-width/gap/columns: DBA piece {piece} (columns from {col}) exceeds the image width {width}")
        boxes.append((row, col, params.piece_height, params.piece_width))
    return boxes


@TRIGGERS.register("dba")
class DBATrigger(Trigger):
    """Attacker ``index`` of ``count`` stamps piece ``index``; the global trigger stamps all pieces."""

    name = "dba"
    Params = DBAParams

    def __init__(self, params=None, *, index=0, count=1, image_shape, seed=0, pieces: list[int] | None = None) -> None:
        super().__init__(params, index=index, count=count, image_shape=image_shape, seed=seed)
        _, height, width = self.image_shape
        self.boxes = piece_boxes(self.params, count, height, width)
        self.pieces = [index] if pieces is None else sorted(set(pieces))
        self.mask = torch.zeros(1, 1, height, width, dtype=torch.bool)
        for piece in self.pieces:
            row, col, h, w = self.boxes[piece]
            self.mask[..., row : row + h, col : col + w] = True

    @property
    def is_global(self) -> bool:
        return len(self.pieces) == self.count and self.count > 1

    @classmethod
    def global_trigger(
        cls,
        params: BaseModel | Mapping[str, Any] | None,
        *,
        count: int,
        image_shape: tuple[int, int, int],
        seed: int,
    ) -> DBATrigger:
        return cls(params, index=0, count=count, image_shape=image_shape, seed=seed, pieces=list(range(count)))

    def apply(self, images: Tensor) -> Tensor:
        self.check_images(images)
        value = torch.tensor(self.params.value, dtype=images.dtype, device=images.device)
        return torch.where(self.mask.to(images.device), value, images).clamp_(0.0, 1.0)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "global": self.is_global,
            "pieces": [
                {"piece": p, "row": self.boxes[p][0], "col": self.boxes[p][1], "height": self.boxes[p][2], "width": self.boxes[p][3]}
                for p in self.pieces
            ],
        }


def dba_global_trigger(
    params: BaseModel | Mapping[str, Any] | None, count: int, image_shape: tuple[int, int, int], seed: int = 0
) -> DBATrigger:
    """The assembled DBA pattern (all ``count`` pieces), for the server's global-trigger ASR."""
    return DBATrigger.global_trigger(params, count=count, image_shape=image_shape, seed=seed)
