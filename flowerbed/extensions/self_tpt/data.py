"""Compositional coloured digits: the offline stand-in for Self-TPT's base-to-new benchmark.

A class is a (colour, digit) pair named in words, "red seven". Images reuse the digits-rgb32
renderer (scikit-learn's bundled 8x8 glyphs under a random affine map, on a 1/f textured
background) with the stroke in the class's colour. Base and new classes split the 40 pairs in
half so that every colour word and every digit word occurs on both sides: a "new" class is an
unseen *combination* of seen words, the way the paper's new classes are unseen names made of
words CLIP knows. Captions for the small CLIP's contrastive pre-training come from a few
templates over all 40 classes (CLIP's own pre-training saw the new concepts too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowerbed.workloads.image_classification.data.digits_rgb import IMAGE_SIZE, jittered_glyph_mask, textured_background

COLOURS = {"red": (0.92, 0.16, 0.12), "green": (0.12, 0.82, 0.22), "blue": (0.18, 0.35, 0.98), "yellow": (0.96, 0.86, 0.12)}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = ("a photo of a {}", "a {}", "a picture of the {}", "this is a {}")
HAND_CRAFTED_TEMPLATE = "a photo of a {}"


@dataclass(frozen=True)
class ColourDigitClass:
    colour: str
    digit: int

    @property
    def name(self) -> str:
        return f"{self.colour} {DIGIT_WORDS[self.digit]}"


ALL_CLASSES = tuple(ColourDigitClass(colour, digit) for colour in COLOURS for digit in range(10))


def split_classes() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Indices into ALL_CLASSES of the base and the new classes (20 each): a pair is base when
    its colour index plus its digit is even, so each word is in both halves."""
    base = tuple(i for i, c in enumerate(ALL_CLASSES) if (list(COLOURS).index(c.colour) + c.digit) % 2 == 0)
    new = tuple(i for i in range(len(ALL_CLASSES)) if i not in base)
    return base, new


@dataclass(frozen=True)
class LabelledImages:
    """uint8 images [N, 3, 32, 32] and labels indexing ALL_CLASSES."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: torch.Tensor) -> LabelledImages:
        return LabelledImages(self.images[mask], self.labels[mask])


def render(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One image per label (an index into ALL_CLASSES), deterministic given the generator."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    glyphs = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    targets = torch.tensor(digits.target)
    digit_of = torch.tensor([c.digit for c in ALL_CLASSES])[labels]
    colour_of = torch.tensor([COLOURS[c.colour] for c in ALL_CLASSES])[labels]
    # A random bundled glyph of each image's digit.
    glyph_index = torch.empty(len(labels), dtype=torch.long)
    for digit in range(10):
        chosen = digit_of == digit
        pool = torch.nonzero(targets == digit).flatten()
        glyph_index[chosen] = pool[torch.randint(len(pool), (int(chosen.sum()),), generator=generator)]
    mask = jittered_glyph_mask(glyphs[glyph_index], generator)
    background = 0.35 * textured_background(len(labels), generator)  # dark, so every colour stands out
    stroke = colour_of[:, :, None, None] + 0.06 * torch.randn((len(labels), 3, 1, 1), generator=generator)
    image = background * (1 - mask) + stroke * mask + 0.015 * torch.randn((len(labels), 3, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def make_images(count: int, classes: tuple[int, ...], seed: int) -> LabelledImages:
    """``count`` images drawn evenly over ``classes`` (indices into ALL_CLASSES)."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.tensor(classes)
    labels = pool[torch.arange(count) % len(pool)]
    labels = labels[torch.randperm(count, generator=generator)]
    return LabelledImages(render(labels, generator), labels)
