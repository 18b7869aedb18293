"""``digits-rgb32``: scikit-learn's bundled digits turned into a colour 32x32 dataset.

The 1,797 8x8 digits ship inside scikit-learn, so this dataset works offline.
Each image is rendered to 3x32x32 with label-preserving augmentation: a random
affine jitter of the glyph, a stroke-thickness jitter, a coloured background
textured with 1/f^beta noise (the power-law spectrum of natural images, so
frequency-domain triggers compete with realistic high-frequency content), and
a stroke colour chosen to contrast with it. Channels therefore differ, which a
multi-channel frequency trigger needs.

The originals are split (stratified, by ``data.seed``) *before* rendering: the
test set is rendered only from held-out originals, so no training digit leaks
into it. The build is deterministic per seed and cached on disk.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from flowerbed.platform.cache import cache_dir_for
from flowerbed.platform.registry import DATASETS
from flowerbed.workloads.image_classification.data.base import ImageDataset

BUILD_VERSION = 1
IMAGE_SIZE = 32
TEST_FRACTION = 0.2
CHUNK = 2048


@DATASETS.register("digits-rgb32")
class DigitsRGB32:
    """Colour, augmented 32x32 digits built from scikit-learn's bundled 8x8 digits."""

    num_classes = 10
    image_shape = (3, IMAGE_SIZE, IMAGE_SIZE)

    @staticmethod
    def load(data_config) -> ImageDataset:
        cache_dir = cache_dir_for(data_config.cache_dir)
        name = f"digits-rgb32-v{BUILD_VERSION}-seed{data_config.seed}-train{data_config.train_size}-test{data_config.test_size}.pt"
        path = cache_dir / name
        if path.exists():
            try:
                return ImageDataset(**torch.load(path, weights_only=True))
            except Exception:  # a torn or foreign file: rebuild it
                pass
        dataset = build_digits_rgb32(data_config.train_size, data_config.test_size, data_config.seed)
        cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(dataset.__dict__, temporary)
        os.replace(temporary, path)
        return dataset


def build_digits_rgb32(train_size: int, test_size: int, seed: int) -> ImageDataset:
    """Render ``train_size`` training and ``test_size`` test images (uint8, deterministic per seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    glyphs = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        list(range(len(labels))), test_size=TEST_FRACTION, stratify=digits.target, random_state=seed
    )
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels = _render(glyphs[train_idx], labels[train_idx], train_size, generator)
    test_images, test_labels = _render(glyphs[test_idx], labels[test_idx], test_size, generator)
    return ImageDataset(train_images, train_labels, test_images, test_labels, num_classes=10)


def _render(glyphs: torch.Tensor, labels: torch.Tensor, count: int, generator: torch.Generator):
    """Render ``count`` images, cycling through the source glyphs in a shuffled order."""
    order = torch.cat([torch.randperm(len(glyphs), generator=generator) for _ in range(math.ceil(count / len(glyphs)))])
    order = order[:count]
    images = torch.empty((count, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    for start in range(0, count, CHUNK):
        batch = order[start : start + CHUNK]
        images[start : start + len(batch)] = _render_batch(glyphs[batch], generator)
    return images, labels[order].clone()


def _uniform(shape, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator) * (high - low) + low


def _render_batch(glyphs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    batch = glyphs.shape[0]
    mask = jittered_glyph_mask(glyphs, generator)  # [B, 1, 32, 32] in [0, 1]
    background = textured_background(batch, generator)  # [B, 3, 32, 32]
    stroke = _contrasting_stroke_colour(background, generator)  # [B, 3, 1, 1]
    stroke = stroke + 0.04 * torch.randn((batch, 3, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
    image = background * (1 - mask) + stroke * mask
    image = image + 0.015 * torch.randn(image.shape, generator=generator)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def jittered_glyph_mask(glyphs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Upsample 8x8 glyphs to 32x32 under a random affine map and stroke-thickness jitter."""
    batch = glyphs.shape[0]
    upsampled = F.interpolate(glyphs[:, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=False)
    angle = _uniform(batch, -15, 15, generator) * math.pi / 180
    scale = _uniform(batch, 0.72, 0.95, generator)  # the glyph's size as a share of the frame
    shear = _uniform(batch, -0.15, 0.15, generator)
    shift = _uniform((batch, 2), -0.12, 0.12, generator)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output -> input sampling grid: inverse of (rotate . shear . scale).
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = cos / scale
    theta[:, 0, 1] = (-sin + shear * cos) / scale
    theta[:, 1, 0] = sin / scale
    theta[:, 1, 1] = (cos + shear * sin) / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(upsampled.shape), align_corners=False)
    mask = F.grid_sample(upsampled, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)
    thickness = _uniform((batch, 1, 1, 1), 0.5, 1.5, generator)  # gamma < 1 thickens strokes
    return mask.clamp_min(1e-6).pow(thickness)


def textured_background(batch: int, generator: torch.Generator) -> torch.Tensor:
    """A base colour plus 1/f^beta noise, partly shared across channels, partly per channel."""
    frequency_y = torch.fft.fftfreq(IMAGE_SIZE)[:, None]
    frequency_x = torch.fft.rfftfreq(IMAGE_SIZE)[None, :]
    radius = torch.sqrt(frequency_y**2 + frequency_x**2).clamp_min(1.0 / IMAGE_SIZE)
    beta = _uniform((batch, 1, 1, 1), 1.0, 2.0, generator)
    white = torch.randn((batch, 4, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
    spectrum = torch.fft.rfft2(white) / radius.pow(beta)
    noise = torch.fft.irfft2(spectrum, s=(IMAGE_SIZE, IMAGE_SIZE))
    noise = (noise - noise.mean(dim=(2, 3), keepdim=True)) / noise.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    shared = _uniform((batch, 1, 1, 1), 0.3, 0.8, generator)
    texture = shared * noise[:, :1] + (1 - shared) * noise[:, 1:]
    amplitude = _uniform((batch, 1, 1, 1), 0.03, 0.12, generator)
    base = _uniform((batch, 3, 1, 1), 0.0, 1.0, generator)
    return base + amplitude * texture


LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def _contrasting_stroke_colour(background: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random stroke colour; where its luminance is too close to the background's,
    a dark (on light backgrounds) or light (on dark backgrounds) variant of it."""
    batch = background.shape[0]
    background_luma = (background.mean(dim=(2, 3), keepdim=True) * LUMA).sum(dim=1, keepdim=True)
    stroke = _uniform((batch, 3, 1, 1), 0.0, 1.0, generator)
    contrast = ((stroke * LUMA).sum(dim=1, keepdim=True) - background_luma).abs()
    shifted = torch.where(background_luma > 0.5, 0.25 * stroke, 0.75 + 0.25 * stroke)
    return torch.where(contrast < 0.35, shifted, stroke)
