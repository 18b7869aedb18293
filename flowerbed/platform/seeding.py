"""One run seed derives every generator: per client and round, and for the server."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *labels: object) -> int:
    """A stable 63-bit seed from the run seed and any labels (e.g. "client", round, partition id)."""
    text = ":".join(str(part) for part in (seed, *labels))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def generator(seed: int, *labels: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *labels))


def seed_torch(seed: int, *labels: object) -> None:
    """Seed torch's global generator (dropout, model initialisation)."""
    torch.manual_seed(derive_seed(seed, *labels))
