"""The three training losses of multi-task simultaneous ST (primary ST, auxiliary ASR and MT).

ST and MT are trained under the same wait-k schedule they are decoded with
(Ma et al., ACL 2019): target position t sees the first k + t source chunks
(speech) or tokens (text). ASR is CTC on the shared, chunk-causal encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flowerbed.extensions.mgcm.corpus import BOS, EOS, PAD, SimulSTCorpus
from flowerbed.extensions.mgcm.model import SimulSTTransformer, read_limits


def teacher_forcing_pair(target: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """(decoder input = BOS + target, decoder output = target + EOS), PAD-padded [B, T + 1]."""
    batch = target.shape[0]
    padded = torch.cat([target, torch.full((batch, 1), PAD, dtype=target.dtype)], dim=1)
    target_out = padded.scatter(1, lengths[:, None], EOS)
    target_in = torch.cat([torch.full((batch, 1), BOS, dtype=target.dtype), target_out[:, :-1]], dim=1)
    target_in = target_in.masked_fill(target_in == EOS, PAD)
    return target_in, target_out


def speech_translation_loss(model: SimulSTTransformer, batch: SimulSTCorpus, wait_k: int | None, chunk_frames: int, states: Tensor | None = None) -> Tensor:
    """Primary task: cross-entropy of the target given wait-k speech chunks."""
    if states is None:
        states = model.encode_speech(batch.frames, batch.frame_lengths, chunk_frames)
    target_in, target_out = teacher_forcing_pair(batch.target, batch.target_lengths)
    limits = read_limits(wait_k, target_in.shape[1], chunk_frames, batch.frame_lengths)
    logits = model.decode(states, target_in, limits)
    return F.cross_entropy(logits.transpose(1, 2), target_out, ignore_index=PAD)


def task_losses(model: SimulSTTransformer, batch: SimulSTCorpus, wait_k: int, chunk_frames: int) -> dict[str, Tensor]:
    """{"st": primary ST loss, "asr": CTC transcript loss, "mt": wait-k text translation loss}."""
    states = model.encode_speech(batch.frames, batch.frame_lengths, chunk_frames)
    st = speech_translation_loss(model, batch, wait_k, chunk_frames, states)
    asr = F.ctc_loss(
        model.ctc_log_probs(states).transpose(0, 1),
        batch.source,
        batch.frame_lengths,
        batch.source_lengths,
        blank=PAD,
        zero_infinity=True,
    )
    text_states = model.encode_text(batch.source, batch.source_lengths)
    target_in, target_out = teacher_forcing_pair(batch.target, batch.target_lengths)
    limits = read_limits(wait_k, target_in.shape[1], 1, batch.source_lengths)
    mt_logits = model.decode(text_states, target_in, limits)
    mt = F.cross_entropy(mt_logits.transpose(1, 2), target_out, ignore_index=PAD)
    return {"st": st, "asr": asr, "mt": mt}
