"""A synthetic speech / transcript / translation corpus for simultaneous ST, built offline.

MuST-C-style triples (speech, source transcript, target translation) are made
from a fixed random "language pair" (:class:`SyntheticLanguage`):

- source sentences: random content words, no word repeated back to back;
- translation: every source word maps to a target word through a fixed
  permutation; "compound" words emit a second target token (a particle); a
  "modifier" word directly followed by a non-modifier swaps places with it
  (local reordering, like adjective-noun order), so translation is learnable
  but not a copy and a wait-k policy pays for reading too little;
- speech: every source word becomes 2..4 feature frames (a variable duration)
  drawn around that word's acoustic vector in a fixed table, plus Gaussian noise.

Everything is vectorised over sentences and seeded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
from torch import Tensor

PAD, BOS, EOS = 0, 1, 2
FIRST_WORD = 3  # ids below are special tokens (PAD doubles as the CTC blank)


@dataclass(frozen=True)
class SyntheticLanguage:
    """A fixed source/target language pair and the acoustics of its source words."""

    num_words: int
    num_particles: int
    target_word: Tensor  # [num_words] permutation: source word -> target word
    compound: Tensor  # [num_words] bool: emits a particle after its target word
    particle: Tensor  # [num_words] which particle a compound word emits
    modifier: Tensor  # [num_words] bool: swaps with a following non-modifier
    acoustics: Tensor  # [num_words, frame_dim] mean frame of each source word

    @classmethod
    def build(cls, num_words: int, num_particles: int, frame_dim: int, seed: int) -> SyntheticLanguage:
        g = torch.Generator().manual_seed(seed)
        return cls(
            num_words=num_words,
            num_particles=num_particles,
            target_word=torch.randperm(num_words, generator=g),
            compound=torch.rand(num_words, generator=g) < 0.2,
            particle=torch.randint(0, max(num_particles, 1), (num_words,), generator=g),
            modifier=torch.rand(num_words, generator=g) < 0.35,
            acoustics=torch.randn(num_words, frame_dim, generator=g),
        )

    @property
    def source_vocab_size(self) -> int:
        return FIRST_WORD + self.num_words

    @property
    def target_vocab_size(self) -> int:
        return FIRST_WORD + self.num_words + self.num_particles

    def sample_sources(self, n: int, min_len: int, max_len: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` source sentences [n, max_len] (token ids, PAD-padded) and their lengths."""
        lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
        first = torch.randint(0, self.num_words, (n, 1), generator=g)
        steps = torch.randint(1, self.num_words, (n, max_len - 1), generator=g)  # never 0: no repeats
        words = torch.cat([first, first + steps.cumsum(1)], dim=1) % self.num_words
        valid = torch.arange(max_len) < lengths[:, None]
        return torch.where(valid, words + FIRST_WORD, PAD), lengths

    def translate(self, source: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Deterministic translation of source sentences: reorder, map words, add particles."""
        n, length = source.shape
        valid = torch.arange(length) < lengths[:, None]
        words = (source - FIRST_WORD).clamp(min=0)
        is_modifier = self.modifier[words] & valid
        # a modifier followed by a (valid) non-modifier swaps with it; such pairs never overlap
        swap = is_modifier[:, :-1] & ~is_modifier[:, 1:] & valid[:, 1:]
        order = torch.arange(length).expand(n, length).clone()
        order[:, :-1] += swap.long()
        order[:, 1:] -= swap.long()
        words = words.gather(1, order)
        first = torch.where(valid, self.target_word[words] + FIRST_WORD, PAD)
        second = torch.where(
            valid & self.compound[words], FIRST_WORD + self.num_words + self.particle[words], PAD
        )
        tokens = torch.stack([first, second], dim=2).reshape(n, 2 * length)
        keep = tokens != PAD
        packed = tokens.gather(1, torch.argsort((~keep).to(torch.int8), dim=1, stable=True))
        target_lengths = keep.sum(1)
        return packed[:, : int(target_lengths.max())], target_lengths

    def speak(
        self, source: Tensor, lengths: Tensor, min_frames: int, max_frames: int, noise: float, g: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Speech features [n, max_frames_total, frame_dim] (zero-padded) and frame counts."""
        n, length = source.shape
        valid = torch.arange(length) < lengths[:, None]
        durations = torch.randint(min_frames, max_frames + 1, (n, length), generator=g) * valid
        frame_lengths = durations.sum(1)
        frame_word = torch.repeat_interleave(source[valid] - FIRST_WORD, durations[valid])
        frame_sentence = torch.repeat_interleave(torch.arange(n), frame_lengths)
        starts = frame_lengths.cumsum(0) - frame_lengths
        position = torch.arange(frame_word.numel()) - starts[frame_sentence]
        dim = self.acoustics.shape[1]
        values = self.acoustics[frame_word] + noise * torch.randn(frame_word.numel(), dim, generator=g)
        frames = torch.zeros(n, int(frame_lengths.max()), dim)
        frames[frame_sentence, position] = values
        return frames, frame_lengths


@dataclass(frozen=True)
class SimulSTCorpus:
    """Aligned (speech, transcript, translation) triples, padded tensors plus lengths."""

    frames: Tensor  # [n, F, frame_dim]
    frame_lengths: Tensor  # [n]
    source: Tensor  # [n, S] transcript token ids
    source_lengths: Tensor  # [n]
    target: Tensor  # [n, T] translation token ids (no BOS/EOS)
    target_lengths: Tensor  # [n]

    def __len__(self) -> int:
        return int(self.frame_lengths.shape[0])

    def subset(self, indices: Tensor) -> SimulSTCorpus:
        """The given examples, with padding trimmed to their longest member."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        if indices.numel() == 0:
            raise ValueError("a corpus subset needs at least one example")
        fl, sl, tl = (self.frame_lengths[indices], self.source_lengths[indices], self.target_lengths[indices])
        return SimulSTCorpus(
            frames=self.frames[indices, : int(fl.max())],
            frame_lengths=fl,
            source=self.source[indices, : int(sl.max())],
            source_lengths=sl,
            target=self.target[indices, : int(tl.max())],
            target_lengths=tl,
        )

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[SimulSTCorpus]:
        """Mini-batches in a (seeded) random order; the last one may be smaller."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            yield self.subset(order[start : start + batch_size])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{f.name}={tuple(getattr(self, f.name).shape)}" for f in fields(self))
        return f"SimulSTCorpus({shapes})"


def build_corpus(
    language: SyntheticLanguage,
    size: int,
    min_len: int,
    max_len: int,
    min_frames: int,
    max_frames: int,
    noise: float,
    seed: int,
) -> SimulSTCorpus:
    """``size`` seeded triples of ``language``."""
    g = torch.Generator().manual_seed(seed)
    source, source_lengths = language.sample_sources(size, min_len, max_len, g)
    target, target_lengths = language.translate(source, source_lengths)
    frames, frame_lengths = language.speak(source, source_lengths, min_frames, max_frames, noise, g)
    return SimulSTCorpus(frames, frame_lengths, source, source_lengths, target, target_lengths)
