"""FTrojan frequency-domain trigger.

Wang et al., "An Invisible Black-box Backdoor Attack through Frequency Domain"
(FTrojan, ECCV 2022, arXiv:2111.10991). The image is converted to YUV (the
reference code uses OpenCV's YCrCb), each ``b x b`` window of the chosen
channels is DCT-transformed, a fixed magnitude is added to a mid and a high
frequency coefficient, and the image is transformed back and clipped.

Units: magnitudes are given on the 0-255 pixel scale, as in the paper, and
applied as ``magnitude / 255`` to orthonormal DCT coefficients of images in
[0, 1] (the orthonormal DCT is linear, so this equals FTrojan's change on
0-255 images divided by 255). The reference code's CIFAR settings
(SoftWiser-group/FTrojan, ``train.py``): YUV, chroma channels 1 and 2, window =
whole 32x32 image, positions (15,15) and (31,31), magnitude 20 (50 in one
``th_train.py`` configuration). Here the default window is the whole image, the
default positions are the window's mid frequency ``(bh/2 - 1, bw/2 - 1)`` and
its highest ``(bh - 1, bw - 1)``, and the default magnitude is 30, between the
two. The reference rounds the image to uint8 after each colour conversion; this
trigger stays in floating point.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from flowerbed.clients.triggers.base import Trigger, TriggerParams
from flowerbed.clients.triggers.helpers.colour import rgb_to_ycbcr, ycbcr_to_rgb
from flowerbed.clients.triggers.helpers.dct import check_window
from flowerbed.clients.triggers.helpers.parsing import parse_int_list, parse_positions
from flowerbed.clients.triggers.helpers.spectral import check_positions, edit_coefficients
from flowerbed.platform.registry import TRIGGERS


class FrequencyParams(TriggerParams):
    colour_space: Literal["yuv", "rgb"] = Field(
        "yuv", alias="colour-space", description="'yuv' = full-range YCbCr (Y, Cb, Cr) as in FTrojan, or 'rgb'."
    )
    channels: str = Field("1,2", description="Comma-separated channel indices in the colour space (FTrojan: 1,2 = chroma).")
    window: int = Field(0, ge=0, description="DCT block size b (must divide H and W); 0 = the whole image (FTrojan).")
    positions: str = Field(
        "",
        description="Coefficient positions 'u:v,u:v' inside the window; empty = mid (b/2-1, b/2-1) and highest (b-1, b-1).",
    )
    magnitude: float = Field(30.0, description="Coefficient change on the 0-255 scale (applied as magnitude/255).")
    mode: Literal["add", "set"] = Field("add", description="'add' the magnitude to the coefficients or 'set' them to it.")


def default_positions(window: tuple[int, int]) -> list[tuple[int, int]]:
    """FTrojan's choice for a window: its mid and its highest frequency."""
    bh, bw = window
    mid = (max(bh // 2 - 1, 0), max(bw // 2 - 1, 0))
    high = (bh - 1, bw - 1)
    return [mid, high] if mid != high else [high]


@TRIGGERS.register("frequency")
class FrequencyTrigger(Trigger):
    """Change fixed DCT coefficients of chosen channels in every window (FTrojan)."""

    name = "frequency"
    Params = FrequencyParams

    def __init__(self, params=None, *, index=0, count=1, image_shape, seed=0) -> None:
        super().__init__(params, index=index, count=count, image_shape=image_shape, seed=seed)
        channels_in, height, width = self.image_shape
        p = self.params
        if p.colour_space == "yuv" and channels_in != 3:
            raise ValueError(f"colour-space: 'yuv' needs 3-channel images, got {channels_in} channels")
        self.channels = parse_int_list(p.channels, parameter="channels")
        bad = [c for c in self.channels if not 0 <= c < channels_in]
        if bad or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels: need distinct indices in [0, {channels_in - 1}], got '{p.channels}'")
        self.window = (height, width) if p.window == 0 else (p.window, p.window)
        check_window(self.window, height, width, parameter="window")
        self.positions = (
            parse_positions(p.positions, parameter="positions") if p.positions.strip() else default_positions(self.window)
        )
        check_positions(self.positions, self.window, parameter="positions")
        # In 'add' mode the trigger is linear: x -> clamp(x + delta), delta = the change made to a black image.
        zeros = torch.zeros(1, *self.image_shape, dtype=torch.float64)
        self.delta = self.transform(zeros) - zeros if p.mode == "add" else None

    def apply(self, images: Tensor) -> Tensor:
        self.check_images(images)
        if self.delta is not None:
            return (images + self.delta.to(images.device, images.dtype)).clamp_(0.0, 1.0)
        return self.transform(images).clamp(0.0, 1.0)

    def transform(self, images: Tensor) -> Tensor:
        """The unclamped trigger, computed the long way: colour conversion, DCT edit, inverse."""
        yuv = self.params.colour_space == "yuv"
        converted = rgb_to_ycbcr(images) if yuv else images
        edited = edit_coefficients(
            converted,
            channels=self.channels,
            window=self.window,
            positions=self.positions,
            value=self.params.magnitude / 255.0,
            mode=self.params.mode,
        )
        return ycbcr_to_rgb(edited) if yuv else edited

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "colour_space": self.params.colour_space,
            "channels": self.channels,
            "window": list(self.window),
            "positions": [list(p) for p in self.positions],
            "magnitude_0_255": self.params.magnitude,
            "coefficient_change_0_1": self.params.magnitude / 255.0,
        }
