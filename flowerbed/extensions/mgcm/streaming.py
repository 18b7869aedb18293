"""Wait-k simultaneous decoding of streaming speech (Ma et al., ACL 2019, over speech chunks).

The source arrives as a :class:`SpeechStream`: the policy can only ``read``
whole chunks of ``chunk_frames`` frames, and only what it has read reaches
the model (unread frames are replaced by zeros before encoding). Before
writing target token t (0-based) the wait-k policy has read
``min(k + t, num_chunks)`` chunks; after the whole source is read it keeps
writing until EOS. Decoding is greedy and batched over sentences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowerbed.extensions.mgcm.corpus import BOS, EOS, PAD
from flowerbed.extensions.mgcm.model import SimulSTTransformer, read_limits


class SpeechStream:
    """Streaming access to a batch of utterances, one chunk at a time (records every read)."""

    def __init__(self, frames: Tensor, frame_lengths: Tensor, chunk_frames: int) -> None:
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self._frames = frames
        self.frame_lengths = frame_lengths
        self.chunk_frames = chunk_frames
        self.num_chunks = (frame_lengths + chunk_frames - 1) // chunk_frames
        self.reads: list[Tensor] = []  # chunks read per sentence, one entry per read() call

    def read(self, chunks: Tensor) -> tuple[Tensor, Tensor]:
        """The first ``chunks[b]`` chunks of every utterance: (frames with all later frames
        zeroed [B, F, D], number of frames read [B])."""
        chunks = torch.minimum(chunks, self.num_chunks)
        self.reads.append(chunks.clone())
        visible = torch.minimum(chunks * self.chunk_frames, self.frame_lengths)
        readable = torch.arange(self._frames.shape[1])[None, :] < visible[:, None]
        return torch.where(readable[:, :, None], self._frames, torch.zeros(())), visible


@dataclass(frozen=True)
class DecodeResult:
    tokens: Tensor  # [B, T] written target tokens, PAD after EOS (EOS not included)
    lengths: Tensor  # [B] number of target tokens written before EOS
    delays: Tensor  # [B, T] frames read when each token was written
    scores: Tensor  # [B, T, V] log-probabilities of each step


@torch.no_grad()
def wait_k_decode(model: SimulSTTransformer, stream: SpeechStream, wait_k: int | None, max_length: int) -> DecodeResult:
    """Greedy wait-k decoding (``wait_k=None``: offline, read everything first)."""
    if wait_k is not None and wait_k < 1:
        raise ValueError(f"wait_k must be >= 1 or None (offline), got {wait_k}")
    batch = stream.num_chunks.shape[0]
    prefix = torch.full((batch, 1), BOS, dtype=torch.long)
    finished = torch.zeros(batch, dtype=torch.bool)
    written, delays, scores = [], [], []
    for t in range(max_length):
        wanted = stream.num_chunks if wait_k is None else torch.full((batch,), wait_k + t)
        frames, visible = stream.read(wanted)
        states = model.encode_speech(frames, visible, stream.chunk_frames)
        limits = read_limits(wait_k, t + 1, stream.chunk_frames, visible)
        log_probs = model.decode(states, prefix, limits)[:, -1].log_softmax(-1)
        token = torch.where(finished, PAD, log_probs.argmax(-1))
        written.append(torch.where(token == EOS, PAD, token))
        delays.append(visible)
        scores.append(log_probs)
        finished |= token == EOS
        prefix = torch.cat([prefix, token[:, None]], dim=1)
        if bool(finished.all()):
            break
    tokens = torch.stack(written, dim=1)
    return DecodeResult(
        tokens=tokens,
        lengths=(tokens != PAD).sum(1),
        delays=torch.stack(delays, dim=1),
        scores=torch.stack(scores, dim=1),
    )
