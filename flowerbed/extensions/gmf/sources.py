"""Offline multimodal data sources for the GMF workload.

- ``synthetic``: a generator with a shared, label-dependent factor seen (noisily)
  by every modality and a private nuisance factor per modality, rendered into
  modalities of different dimensions by random tanh networks.
- ``digits``: three views of scikit-learn's bundled 8x8 digits: the image, its
  row/column intensity profiles, and a noisy 4x4 low-resolution copy.
- ``features``: the user's own pre-extracted features from a local ``.npz`` file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from flowerbed.extensions.gmf.data import MultimodalData

FEATURE_FILE_HELP = (
    "save a NumPy archive with np.savez(path, labels=<(N,) class ids>, <modality name>=<(N, d) features>, ...), "
    "one 2-D array per modality (dimensions may differ), and set workload.gmf.data-path to it"
)


def make_synthetic(
    num_samples: int,
    dims: Sequence[int],
    num_classes: int,
    shared_dim: int,
    private_dim: int,
    shared_noise: float,
    private_scale: float,
    seed: int,
) -> MultimodalData:
    """Shared (label) and private (nuisance) factors rendered into ``len(dims)`` modalities.

    The label picks a class prototype in the shared space. Modality m sees the
    shared factor plus its own noise (std ``shared_noise``), so fusing modalities
    averages that noise away, next to a private label-free factor (std
    ``private_scale``); [seen shared; private] passes through a random
    tanh network into ``dims[m]`` features.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (num_samples,), generator=generator)
    prototypes = torch.randn(num_classes, shared_dim, generator=generator)
    shared = prototypes[labels] + 0.3 * torch.randn(num_samples, shared_dim, generator=generator)
    features = []
    for dim in dims:
        seen = shared + shared_noise * torch.randn(num_samples, shared_dim, generator=generator)
        private = private_scale * torch.randn(num_samples, private_dim, generator=generator)
        latent = torch.cat([seen, private], dim=1)
        first = torch.randn(latent.shape[1], dim, generator=generator) / latent.shape[1] ** 0.5
        second = torch.randn(dim, dim, generator=generator) / dim**0.5
        rendered = torch.tanh(latent @ first) @ second
        features.append(rendered + 0.05 * torch.randn(num_samples, dim, generator=generator))
    names = tuple(f"m{i}" for i in range(len(dims)))
    return MultimodalData(names, tuple(features), labels)


def make_digits_views(lowres_noise: float, seed: int) -> MultimodalData:
    """Three views of sklearn digits (1,797 images): image (64), profiles (16), noisy low-res (16)."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # (N, 8, 8) in [0, 1]
    profiles = torch.cat([images.mean(dim=2), images.mean(dim=1)], dim=1)
    lowres = F.avg_pool2d(images.unsqueeze(1), kernel_size=2).flatten(1)
    generator = torch.Generator().manual_seed(seed)
    lowres = lowres + lowres_noise * torch.randn(lowres.shape, generator=generator)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    return MultimodalData(("image", "profiles", "lowres"), (images.flatten(1), profiles, lowres), labels)


def load_feature_file(path: str | Path) -> MultimodalData:
    """Pre-extracted features from a ``.npz`` archive (key ``labels`` plus one array per modality)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"workload.gmf.data-path: no file at '{path}'; {FEATURE_FILE_HELP}")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    if "labels" not in arrays:
        raise ValueError(f"workload.gmf.data-path: '{path}' has no 'labels' array; {FEATURE_FILE_HELP}")
    raw_labels = arrays.pop("labels")
    if raw_labels.ndim != 1:
        raise ValueError(f"workload.gmf.data-path: 'labels' must be 1-D, got shape {raw_labels.shape}")
    if len(arrays) < 2:
        raise ValueError(
            f"workload.gmf.data-path: '{path}' holds {len(arrays)} modality array(s); at least 2 are needed"
        )
    for name, array in arrays.items():
        if array.ndim != 2 or array.shape[0] != raw_labels.shape[0]:
            raise ValueError(
                f"workload.gmf.data-path: modality '{name}' has shape {array.shape}; "
                f"expected ({raw_labels.shape[0]}, dim)"
            )
    _, labels = np.unique(raw_labels, return_inverse=True)  # any label values -> 0..C-1
    features = tuple(torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in arrays.values())
    return MultimodalData(tuple(arrays), features, torch.as_tensor(labels, dtype=torch.int64))
