"""Blended trigger.

Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems Using Data
Poisoning" (arXiv:1712.05526, 2017): the triggered image is
``(1 - alpha) * x + alpha * pattern`` for a fixed full-size pattern. The paper
blends a cartoon image or random noise with alpha = 0.2 for poisoning.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from flowerbed.clients.triggers.base import Trigger, TriggerParams
from flowerbed.platform.registry import TRIGGERS


class BlendParams(TriggerParams):
    alpha: float = Field(0.2, gt=0.0, le=1.0, description="Blend ratio of the pattern (Chen et al.: 0.2).")
    pattern: Literal["noise", "sine", "image"] = Field(
        "noise",
        description="'noise': uniform noise fixed by the run seed and the attacker's index; "
        "'sine': a colour sinusoidal grating; "
        "'image': the picture at image-path, resized to the input size.",
    )
    frequency: float = Field(6.0, gt=0.0, description="Cycles across the image width ('sine' pattern).")
    image_path: str | None = Field(None, alias="image-path", description="Image file for pattern='image'.")

    @model_validator(mode="after")
    def _path_with_image(self) -> BlendParams:
        if self.pattern == "image" and not self.image_path:
            raise ValueError("pattern='image' needs image-path")
        if self.pattern != "image" and self.image_path:
            raise ValueError(f"image-path is only used with pattern='image' (pattern is '{self.pattern}')")
        return self


def make_blend_pattern(params: BlendParams, image_shape: tuple[int, int, int], seed: int) -> Tensor:
    """The [C,H,W] pattern in [0,1] that gets blended in."""
    channels, height, width = image_shape
    if params.pattern == "noise":
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(image_shape, generator=generator)
    if params.pattern == "sine":
        columns = torch.arange(width, dtype=torch.float32)
        rows = torch.arange(height, dtype=torch.float32).unsqueeze(1)
        # Each channel gets the grating with a phase shift, so the pattern is coloured.
        phases = 2 * math.pi * torch.arange(channels, dtype=torch.float32) / max(channels, 1)
        angle = 2 * math.pi * params.frequency * (columns + 0.5 * rows) / width
        return 0.5 + 0.5 * torch.sin(angle.unsqueeze(0) + phases.view(-1, 1, 1))
    return load_pattern_image(Path(params.image_path), image_shape)  # type: ignore[arg-type]


def load_pattern_image(path: Path, image_shape: tuple[int, int, int]) -> Tensor:
    """Read an image file as [C,H,W] in [0,1], resized (antialiased bilinear) to ``image_shape``."""
    import numpy as np
    from PIL import Image

    if not path.is_file():
        raise ValueError(f"image-path: no image file at '{path}' (give a PNG or JPEG for the blend pattern)")
    channels, height, width = image_shape
    with Image.open(path) as opened:
        pixels = np.asarray(opened.convert("RGB" if channels == 3 else "L"), dtype=np.float32) / 255.0
    picture = torch.from_numpy(pixels.reshape(pixels.shape[0], pixels.shape[1], -1)).permute(2, 0, 1)
    if picture.shape[0] != channels:
        picture = picture[:1].expand(channels, -1, -1)
    resized = F.interpolate(picture.unsqueeze(0), size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return resized.squeeze(0).clamp(0.0, 1.0)


@TRIGGERS.register("blend")
class BlendTrigger(Trigger):
    """Blend a fixed full-image pattern into the input with ratio ``alpha``.

    The noise pattern comes from ``seed``; the attack plan derives a seed per
    attacker (run seed, trigger name, index), so several blended attackers of a
    run plant different noise patterns: separate backdoors, not one shared key.
    """

    name = "blend"
    Params = BlendParams

    def __init__(self, params=None, *, index=0, count=1, image_shape, seed=0) -> None:
        super().__init__(params, index=index, count=count, image_shape=image_shape, seed=seed)
        self.pattern = make_blend_pattern(self.params, self.image_shape, seed)

    def apply(self, images: Tensor) -> Tensor:
        self.check_images(images)
        pattern = self.pattern.to(images.device, images.dtype).unsqueeze(0)
        return torch.lerp(images, pattern, self.params.alpha).clamp_(0.0, 1.0)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed": self.seed}
