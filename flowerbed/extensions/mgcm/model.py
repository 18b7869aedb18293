"""A small streaming Transformer encoder-decoder for multi-task simultaneous ST.

One shared encoder serves speech (through a linear acoustic front end) and
source text (through a word embedding); one shared decoder writes the target.
Tasks, as in the DiSeg recipe that MGCM (arXiv:2409.15911) builds on:
speech -> target (ST, primary), speech -> transcript (ASR, CTC head on the
encoder, auxiliary), transcript -> target (MT, auxiliary). The encoder is
chunk-causal (a frame sees only its own and earlier chunks), so encoder states
of what has been read never depend on what has not; the decoder's
cross-attention is limited per target position (wait-k). Every LayerNorm, FFN
and attention sub-layer is its own ``nn.Module``, so the MGCM partition falls
out of the module tree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowerbed.extensions.mgcm.corpus import PAD


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """Fixed sine/cosine position encodings [length, dim] (Vaswani et al., 2017)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: dim // 2])
    return table


def chunk_causal_mask(length: int, unit: int) -> Tensor:
    """[length, length] bool, True = blocked: position i may see j iff chunk(j) <= chunk(i)."""
    chunk = torch.arange(length) // unit
    return chunk[None, :] > chunk[:, None]


def read_limits(wait_k: int | None, target_length: int, unit: int, visible: Tensor) -> Tensor:
    """[B, T] source positions target position t may attend: min((k + t) * unit, visible).

    ``visible`` [B] is how much of each source is available (its length, or what has
    been read so far); ``wait_k=None`` means offline (everything visible).
    """
    if wait_k is None:
        return visible[:, None].expand(-1, target_length)
    steps = (wait_k + torch.arange(target_length)) * unit
    return torch.minimum(steps[None, :], visible[:, None])


class FeedForward(nn.Module):
    """Position-wise feed-forward sub-layer (one MGCM module)."""

    def __init__(self, d_model: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(d_model, hidden)
        self.outer = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(self.dropout(F.relu(self.inner(x))))


class EncoderLayer(nn.Module):
    """Pre-LN self-attention + FFN."""

    def __init__(self, d_model: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, hidden, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, padding: Tensor) -> Tensor:
        h = self.self_attn_norm(x)
        x = x + self.dropout(self.self_attn(h, h, h, attn_mask=mask, key_padding_mask=padding, need_weights=False)[0])
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class DecoderLayer(nn.Module):
    """Pre-LN causal self-attention + wait-k cross-attention + FFN."""

    def __init__(self, d_model: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.cross_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, hidden, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, y: Tensor, memory: Tensor, causal: Tensor, cross_mask: Tensor) -> Tensor:
        h = self.self_attn_norm(y)
        y = y + self.dropout(self.self_attn(h, h, h, attn_mask=causal, need_weights=False)[0])
        h = self.cross_attn_norm(y)
        y = y + self.dropout(self.cross_attn(h, memory, memory, attn_mask=cross_mask, need_weights=False)[0])
        return y + self.dropout(self.ffn(self.ffn_norm(y)))


class SimulSTTransformer(nn.Module):
    """Shared encoder-decoder with an acoustic front end, a source embedding, a CTC head."""

    def __init__(
        self,
        frame_dim: int,
        source_vocab: int,
        target_vocab: int,
        d_model: int = 64,
        heads: int = 4,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        ffn_dim: int = 128,
        dropout: float = 0.0,
        max_positions: int = 256,
    ) -> None:
        super().__init__()
        self.d_model, self.heads = d_model, heads
        self.acoustic_frontend = nn.Linear(frame_dim, d_model)
        self.source_embedding = nn.Embedding(source_vocab, d_model, padding_idx=PAD)
        self.encoder_layers = nn.ModuleList(EncoderLayer(d_model, heads, ffn_dim, dropout) for _ in range(encoder_layers))
        self.encoder_norm = nn.LayerNorm(d_model)
        self.ctc_head = nn.Linear(d_model, source_vocab)  # blank = PAD
        self.target_embedding = nn.Embedding(target_vocab, d_model, padding_idx=PAD)
        self.decoder_layers = nn.ModuleList(DecoderLayer(d_model, heads, ffn_dim, dropout) for _ in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.output_projection = nn.Linear(d_model, target_vocab)
        self.register_buffer("positions", sinusoidal_positions(max_positions, d_model), persistent=False)

    def _encode(self, x: Tensor, lengths: Tensor, unit: int) -> Tensor:
        length = x.shape[1]
        if length > self.positions.shape[0]:
            raise ValueError(f"source of {length} positions exceeds max_positions={self.positions.shape[0]}")
        x = x + self.positions[:length]
        mask = chunk_causal_mask(length, unit)
        padding = torch.arange(length)[None, :] >= lengths[:, None]
        for layer in self.encoder_layers:
            x = layer(x, mask, padding)
        return self.encoder_norm(x)

    def encode_speech(self, frames: Tensor, frame_lengths: Tensor, chunk_frames: int) -> Tensor:
        """Encoder states [B, F, d] of speech frames, chunk-causal over ``chunk_frames``-frame chunks."""
        return self._encode(self.acoustic_frontend(frames), frame_lengths, chunk_frames)

    def encode_text(self, source: Tensor, source_lengths: Tensor) -> Tensor:
        """Encoder states [B, S, d] of source tokens, causal (one token = one unit)."""
        return self._encode(self.source_embedding(source), source_lengths, 1)

    def ctc_log_probs(self, states: Tensor) -> Tensor:
        """Per-frame transcript log-probabilities [B, F, source_vocab] (blank = PAD)."""
        return F.log_softmax(self.ctc_head(states), dim=-1)

    def decode(self, memory: Tensor, target_in: Tensor, limits: Tensor) -> Tensor:
        """Target logits [B, T, V]; position t attends source positions < ``limits[b, t]`` only."""
        length = target_in.shape[1]
        y = self.target_embedding(target_in) + self.positions[:length]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        blocked = torch.arange(memory.shape[1])[None, None, :] >= limits[:, :, None]  # [B, T, S]
        cross_mask = blocked.repeat_interleave(self.heads, dim=0)
        for layer in self.decoder_layers:
            y = layer(y, memory, causal, cross_mask)
        return self.output_projection(self.decoder_norm(y))
