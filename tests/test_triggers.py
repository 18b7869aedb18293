"""Triggers: shape/range/no-mutation contracts, what each one changes, DCT, colour, stealth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.fft
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from flowerbed.clients.triggers.base import Backdoor, Trigger
from flowerbed.clients.triggers.blend import BlendTrigger
from flowerbed.clients.triggers.dba import DBATrigger, dba_global_trigger
from flowerbed.clients.triggers.dmba import DMBATrigger, dmba_assignment
from flowerbed.clients.triggers.frequency import FrequencyTrigger
from flowerbed.clients.triggers.helpers.colour import rgb_to_ycbcr, ycbcr_to_rgb
from flowerbed.clients.triggers.helpers.dct import block_dct2, block_idct2, dct_matrix
from flowerbed.clients.triggers.helpers.stealth import psnr, ssim
from flowerbed.clients.triggers.patch import PatchTrigger
from flowerbed.platform.registry import TRIGGERS

SHAPE = (3, 32, 32)
TRIGGER_NAMES = TRIGGERS.names()  # the shared contracts below run on every registered trigger


def grey(batch: int = 2, shape=SHAPE) -> torch.Tensor:
    return torch.full((batch, *shape), 0.5)


def random_images(batch: int = 4, shape=SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.rand((batch, *shape), generator=torch.Generator().manual_seed(seed))


def dct_of_difference(trigger: Trigger, window: tuple[int, int], images: torch.Tensor) -> torch.Tensor:
    """Blockwise DCT of (triggered - clean): [B, C, nH, nW, bh, bw]."""
    return block_dct2((trigger.apply(images) - images).double(), window)


# --- contracts shared by every trigger -------------------------------------------------


def test_builtin_triggers_are_registered():
    assert TRIGGER_NAMES, "no trigger is registered"
    for name in TRIGGER_NAMES:
        trigger_class = TRIGGERS.get(name)
        assert issubclass(trigger_class, Trigger) and trigger_class.name == name


@pytest.mark.parametrize("name", TRIGGER_NAMES)
def test_trigger_contract(name):
    trigger = TRIGGERS.get(name)(index=1, count=3, image_shape=SHAPE, seed=7)
    images = random_images()
    before = images.clone()
    triggered = trigger.apply(images)
    assert torch.equal(images, before), "apply must not modify its input"
    assert triggered.shape == images.shape and triggered.dtype == images.dtype
    assert triggered.min() >= 0.0 and triggered.max() <= 1.0
    assert not torch.equal(triggered, images)
    assert torch.equal(trigger.apply(images), triggered), "apply must be deterministic"
    # Vectorised over the batch: one image alone gives the same result as inside a batch.
    assert torch.allclose(trigger.apply(images[2:3]), triggered[2:3], atol=1e-6)
    description = trigger.describe()
    assert description["trigger"] == name and description["index"] == 1
    json.dumps(description)
    stealth = trigger.stealth(images)
    assert set(stealth) == {"psnr", "ssim"} and 0 < stealth["ssim"] < 1


@pytest.mark.parametrize("name", TRIGGER_NAMES)
def test_trigger_rejects_wrong_image_shape_and_bad_params(name):
    trigger_class = TRIGGERS.get(name)
    trigger = trigger_class(image_shape=SHAPE)
    with pytest.raises(ValueError, match="expects"):
        trigger.apply(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="index"):
        trigger_class(index=3, count=3, image_shape=SHAPE)
    with pytest.raises(ValueError, match=rf"^trigger\.{name}\.no-such-param: Extra inputs"):
        trigger_class({"no-such-param": 1}, image_shape=SHAPE)


def test_backdoor_is_a_named_trigger_target_pair():
    trigger = PatchTrigger(image_shape=SHAPE)
    backdoor = Backdoor("patch-0", trigger, 3)
    assert backdoor.trigger is trigger and backdoor.target == 3
    with pytest.raises(ValueError, match="target"):
        Backdoor("bad", trigger, -1)
    assert backdoor.source_classes == () and "source_classes" not in backdoor.describe()
    specific = Backdoor("patch-0", trigger, 3, source_classes=[1, 2])
    assert specific.source_classes == (1, 2) and specific.describe()["source_classes"] == [1, 2]
    for sources in ([3], [1, -2]):
        with pytest.raises(ValueError, match="source classes"):
            Backdoor("bad", trigger, 3, source_classes=sources)


# --- patch ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, rows, cols",
    [
        ({}, slice(28, 31), slice(28, 31)),  # bottom-right, margin 1, size 3
        ({"location": "top-left", "margin": 0, "size": 4}, slice(0, 4), slice(0, 4)),
        ({"location": "xy", "x": 5, "y": 10, "size": 2}, slice(10, 12), slice(5, 7)),
    ],
)
def test_patch_changes_only_patch_pixels(params, rows, cols):
    trigger = PatchTrigger(params, image_shape=SHAPE)
    images = grey()
    changed = (trigger.apply(images) != images).any(dim=(0, 1))
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[rows, cols] = True
    assert torch.equal(changed, expected)


def test_patch_per_attacker_location_gives_each_attacker_its_own_corner():
    images = grey()
    changed = []
    for index in range(5):
        trigger = PatchTrigger({"location": "per-attacker", "margin": 0, "size": 2}, index=index, count=5, image_shape=SHAPE)
        changed.append((trigger.apply(images) != images).any(dim=(0, 1)))
    corners = [(0, 0), (0, 30), (30, 0), (30, 30)]  # top-left, top-right, bottom-left, bottom-right
    for index, (row, col) in enumerate(corners):
        expected = torch.zeros(32, 32, dtype=torch.bool)
        expected[row : row + 2, col : col + 2] = True
        assert torch.equal(changed[index], expected), index
    assert torch.equal(changed[4], changed[0])  # a fifth attacker wraps around to the first corner


def test_patch_pattern_values():
    square = PatchTrigger({"pattern": "square", "value": 0.8, "location": "top-left", "margin": 0}, image_shape=SHAPE)
    assert torch.allclose(square.apply(grey())[:, :, :3, :3], torch.tensor(0.8))
    checker = PatchTrigger({"pattern": "checkerboard", "location": "top-left", "margin": 0}, image_shape=SHAPE)
    patch = checker.apply(grey())[0, 0, :3, :3]
    assert torch.equal(patch, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]))


def test_patch_outside_image_names_parameter():
    with pytest.raises(ValueError, match="x:"):
        PatchTrigger({"location": "xy", "x": 30, "y": 0, "size": 3}, image_shape=SHAPE)
    with pytest.raises(ValueError, match="y:"):
        PatchTrigger({"location": "xy", "x": 0, "y": 31, "size": 3}, image_shape=SHAPE)
    with pytest.raises(ValueError, match="size"):
        PatchTrigger({"size": 40}, image_shape=SHAPE)
    with pytest.raises(Exception, match="x and y"):
        PatchTrigger({"location": "xy", "x": 1}, image_shape=SHAPE)


# --- blend ------------------------------------------------------------------------------


def test_blend_is_convex_combination_with_seeded_pattern():
    images = random_images()
    trigger = BlendTrigger({"alpha": 0.3}, image_shape=SHAPE, seed=4)
    expected = 0.7 * images + 0.3 * trigger.pattern.unsqueeze(0)
    assert torch.allclose(trigger.apply(images), expected, atol=1e-6)
    same_seed = BlendTrigger({"alpha": 0.3}, image_shape=SHAPE, seed=4)
    other_seed = BlendTrigger({"alpha": 0.3}, image_shape=SHAPE, seed=5)
    assert torch.equal(trigger.pattern, same_seed.pattern)
    assert not torch.equal(trigger.pattern, other_seed.pattern)


def test_blend_sine_and_image_patterns(tmp_path):
    from PIL import Image

    sine = BlendTrigger({"pattern": "sine"}, image_shape=SHAPE)
    assert sine.pattern.shape == SHAPE and 0 <= sine.pattern.min() and sine.pattern.max() <= 1
    picture = np.zeros((64, 64, 3), dtype=np.uint8)
    picture[..., 0] = 255  # pure red
    path = tmp_path / "pattern.png"
    Image.fromarray(picture, "RGB").save(path)
    blended = BlendTrigger({"pattern": "image", "image-path": str(path), "alpha": 1.0}, image_shape=SHAPE)
    out = blended.apply(grey())
    assert torch.allclose(out[:, 0], torch.tensor(1.0)) and torch.allclose(out[:, 1:], torch.tensor(0.0))
    with pytest.raises(ValueError, match="image-path"):
        BlendTrigger({"pattern": "image", "image-path": str(tmp_path / "missing.png")}, image_shape=SHAPE)


# --- DBA --------------------------------------------------------------------------------


def test_dba_default_layout_matches_paper_and_pieces_partition_global():
    count = 4
    locals_ = [DBATrigger(index=i, count=count, image_shape=SHAPE) for i in range(count)]
    changed = [(t.apply(grey()) != grey()).any(dim=(0, 1)) for t in locals_]
    # The authors' CIFAR layout (AI-secure/DBA utils/cifar_params.yaml, 0_poison_pattern ..
    # 3_poison_pattern): 1x6 bars at rows 0 and 4, columns 0-5 and 9-14.
    expected_boxes = [(0, 0), (0, 9), (4, 0), (4, 9)]
    for piece, (row, col) in zip(changed, expected_boxes, strict=True):
        box = torch.zeros(32, 32, dtype=torch.bool)
        box[row, col : col + 6] = True
        assert torch.equal(piece, box)
    global_trigger = dba_global_trigger(None, count, SHAPE, seed=0)
    assert global_trigger.is_global
    assert DBATrigger.global_trigger(None, count=count, image_shape=SHAPE, seed=0).describe()["global"]
    global_changed = (global_trigger.apply(grey()) != grey()).any(dim=(0, 1))
    assert torch.equal(global_changed, torch.stack(changed).any(dim=0))
    assert int(torch.stack(changed).sum()) == int(global_changed.sum())  # disjoint pieces
    assert Trigger.global_trigger.__func__(PatchTrigger, None, count=2, image_shape=SHAPE, seed=0) is None


def test_dba_pieces_must_fit():
    with pytest.raises(ValueError, match="piece"):
        DBATrigger({"piece-width": 20}, index=0, count=4, image_shape=SHAPE)


# --- DCT and colour ---------------------------------------------------------------------


def test_dct_matrix_is_orthonormal_and_matches_scipy():
    for n in (1, 4, 8, 32):
        d = dct_matrix(n)
        assert torch.allclose(d @ d.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    image = np.random.default_rng(0).random((2, 3, 16, 24))
    whole = block_dct2(torch.from_numpy(image), (16, 24))[:, :, 0, 0]
    assert np.allclose(whole.numpy(), scipy.fft.dctn(image, axes=(-2, -1), norm="ortho"))
    blocks = block_dct2(torch.from_numpy(image), (8, 8))
    expected = scipy.fft.dctn(image[:, :, 8:16, 16:24], axes=(-2, -1), norm="ortho")
    assert np.allclose(blocks[:, :, 1, 2].numpy(), expected)
    assert torch.allclose(block_idct2(blocks), torch.from_numpy(image), atol=1e-12)


def test_ycbcr_roundtrip_and_reference_values():
    images = random_images()
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(images)), images, atol=1e-6)
    from PIL import Image

    pixels = (random_images(1, (3, 4, 4)) * 255).round().to(torch.uint8)
    reference = Image.fromarray(pixels[0].permute(1, 2, 0).numpy(), "RGB").convert("YCbCr")
    ours = rgb_to_ycbcr(pixels.double() / 255)[0].permute(1, 2, 0) * 255
    assert np.abs(np.asarray(reference, dtype=np.float64) - ours.numpy()).max() <= 1.0


# --- frequency (FTrojan) ----------------------------------------------------------------


def test_frequency_defaults_follow_ftrojan():
    trigger = FrequencyTrigger(image_shape=SHAPE)
    assert trigger.channels == [1, 2] and trigger.window == (32, 32)
    assert trigger.positions == [(15, 15), (31, 31)]


@pytest.mark.parametrize(
    "params",
    [
        {},  # yuv, channels 1,2, whole image
        {"colour-space": "rgb", "channels": "0", "window": 8, "positions": "3:4,7:7", "magnitude": 20},
    ],
)
def test_frequency_changes_only_chosen_coefficients(params):
    trigger = FrequencyTrigger(params, image_shape=SHAPE)
    images = grey()
    difference = trigger.apply(images) - images
    if trigger.params.colour_space == "yuv":  # look at the change in the space it was made in
        difference = rgb_to_ycbcr(difference.double()) - rgb_to_ycbcr(torch.zeros_like(difference).double())
    coefficients = block_dct2(difference.double(), trigger.window)
    expected = torch.zeros_like(coefficients)
    u = torch.tensor([p[0] for p in trigger.positions])
    v = torch.tensor([p[1] for p in trigger.positions])
    for channel in trigger.channels:
        expected[:, channel, :, :, u, v] = trigger.params.magnitude / 255
    assert torch.allclose(coefficients, expected, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: FrequencyTrigger(image_shape=SHAPE),
    lambda: FrequencyTrigger({"colour-space": "rgb", "channels": "0,2", "window": 4, "magnitude": -25}, image_shape=SHAPE),
    lambda: DMBATrigger(index=2, count=3, image_shape=SHAPE),
])
def test_additive_triggers_precomputed_delta_equals_the_full_transform(make):
    trigger = make()
    images = random_images(6, seed=3)  # includes pixels near 0 and 1, so clamping is exercised too
    assert torch.allclose(trigger.apply(images), trigger.transform(images).clamp(0, 1), atol=1e-6)


def test_frequency_set_mode_sets_coefficients():
    trigger = FrequencyTrigger({"colour-space": "rgb", "channels": "2", "window": 8, "mode": "set", "positions": "5:5", "magnitude": 10}, image_shape=SHAPE)
    images = random_images() * 0.5 + 0.25  # stays away from clamping
    coefficients = block_dct2(trigger.apply(images).double(), (8, 8))
    assert torch.allclose(coefficients[:, 2, :, :, 5, 5], torch.tensor(10 / 255, dtype=torch.float64), atol=1e-5)


def test_frequency_validation_names_parameter():
    with pytest.raises(ValueError, match="positions"):
        FrequencyTrigger({"window": 8, "positions": "8:0"}, image_shape=SHAPE)
    with pytest.raises(ValueError, match="positions"):
        FrequencyTrigger({"positions": "3-4"}, image_shape=SHAPE)
    with pytest.raises(ValueError, match="window"):
        FrequencyTrigger({"window": 5}, image_shape=SHAPE)
    with pytest.raises(ValueError, match="channels"):
        FrequencyTrigger({"colour-space": "rgb", "channels": "0,3"}, image_shape=SHAPE)


# --- DMBA -------------------------------------------------------------------------------


def test_dmba_three_attackers_get_distinct_channels_and_disjoint_positions():
    triggers = [DMBATrigger(index=i, count=3, image_shape=SHAPE) for i in range(3)]
    assert [t.channel for t in triggers] == [0, 1, 2]
    position_sets = [set(t.positions) for t in triggers]
    assert all(len(s) == 2 for s in position_sets)
    assert len(set.union(*position_sets)) == 6
    assert all(u + v >= 4 for s in position_sets for u, v in s)  # mid/high band of an 8x8 block
    assert all(t.assignment == triggers[0].assignment for t in triggers)  # everyone derives the same table


def test_dmba_reuses_channels_with_disjoint_positions_for_five_attackers():
    table = dmba_assignment(5, (8, 8), 2, 4, [0, 1, 2])
    assert [channel for channel, _ in table] == [0, 1, 2, 0, 1]
    assert set(table[0][1]).isdisjoint(table[3][1]) and set(table[1][1]).isdisjoint(table[4][1])
    assert len({p for _, positions in table for p in positions}) == 10


def test_dmba_positions_follow_greedy_max_min_rule():
    count, per_attacker = 3, 2
    table = dmba_assignment(count, (8, 8), per_attacker, 4, [0, 1, 2])
    # Pick k went to attacker k % count, as its (k // count)-th position.
    picks = [table[k % count][1][k // count] for k in range(count * per_attacker)]
    assert picks[0] == (7, 7)  # starts at the highest frequency
    candidates = torch.tensor([(u, v) for u in range(8) for v in range(8) if u + v >= 4], dtype=torch.float64)
    chosen = torch.tensor(picks, dtype=torch.float64)
    for k in range(1, len(picks)):
        distance_to_previous = torch.cdist(candidates, chosen[:k]).min(dim=1).values
        best = distance_to_previous.max()
        assert torch.cdist(chosen[k : k + 1], chosen[:k]).min() == pytest.approx(best.item())
    # Spread beats the naive choice of the six highest frequencies (clustered in a corner).
    naive = torch.tensor([(7, 7), (6, 7), (7, 6), (5, 7), (6, 6), (7, 5)], dtype=torch.float64)
    def min_gap(points):
        return (torch.cdist(points, points) + torch.eye(len(points)) * 1e9).min()
    assert min_gap(chosen) > 2 * min_gap(naive)


@pytest.mark.parametrize("index", range(3))
def test_dmba_changes_only_own_channel_and_positions(index):
    trigger = DMBATrigger(index=index, count=3, image_shape=SHAPE)
    coefficients = dct_of_difference(trigger, (8, 8), grey())
    expected = torch.zeros_like(coefficients)
    u = torch.tensor([p[0] for p in trigger.positions])
    v = torch.tensor([p[1] for p in trigger.positions])
    expected[:, trigger.channel, :, :, u, v] = 30 / 255
    assert torch.allclose(coefficients, expected, atol=1e-5)


def test_dmba_is_invisible_at_default_magnitude():
    images = random_images(8) * 0.8 + 0.1
    for index in range(3):
        stealth = DMBATrigger(index=index, count=3, image_shape=SHAPE).stealth(images)
        assert stealth["psnr"] > 35 and stealth["ssim"] > 0.9


def test_dmba_validation_names_parameter():
    with pytest.raises(ValueError, match="positions-per-attacker"):
        DMBATrigger({"positions-per-attacker": 12}, index=0, count=5, image_shape=SHAPE)
    with pytest.raises(ValueError, match="window"):
        DMBATrigger({"window": 7}, image_shape=SHAPE)
    with pytest.raises(ValueError, match="channels"):
        DMBATrigger({"channels": "0,5"}, image_shape=SHAPE)


# --- stealth metrics against scikit-image ------------------------------------------------


def test_stealth_metrics_agree_with_skimage():
    clean = random_images(3, seed=1)
    smooth = torch.nn.functional.avg_pool2d(clean, 3, stride=1, padding=1)
    for other in (smooth, PatchTrigger(image_shape=SHAPE).apply(clean), (clean + 0.05 * random_images(3, seed=2)).clamp(0, 1)):
        ours_psnr, ours_ssim = psnr(clean, other), ssim(clean, other)
        for i in range(len(clean)):
            a = clean[i].permute(1, 2, 0).double().numpy()
            b = other[i].permute(1, 2, 0).double().numpy()
            reference_ssim = structural_similarity(
                a, b, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
            )
            assert ours_ssim[i].item() == pytest.approx(reference_ssim, abs=1e-6)
            assert ours_psnr[i].item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-6)
    assert psnr(clean, clean).isinf().all() and torch.allclose(ssim(clean, clean), torch.ones(3, dtype=torch.float64))
