"""Quality and latency of simultaneous translation: SacreBLEU and Average Lagging.

Average Lagging (Ma et al., "STACL", ACL 2019), per sentence:
``AL = 1/tau * sum_{t=1..tau} [ g(t) - (t - 1) / gamma ]`` with ``g(t)`` the
source read (here: frames) when target token t was written, ``gamma = |y| / |x|``
(hypothesis length over source length) and ``tau`` the first t with
``g(t) = |x|`` (or |y| if the source is never fully read). An empty
hypothesis counts as one token written at the read of its EOS.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowerbed.extensions.mgcm.corpus import FIRST_WORD, PAD


def average_lagging(delays: Tensor, hypothesis_lengths: Tensor, source_lengths: Tensor) -> Tensor:
    """Per-sentence AL [B] from delays [B, T] (source units read per written token)."""
    delays = delays.to(torch.float64)
    steps = torch.arange(delays.shape[1], dtype=torch.float64)[None, :]  # t - 1
    written = hypothesis_lengths.clamp(min=1).to(torch.float64)[:, None]
    source = source_lengths.to(torch.float64)[:, None]
    valid = steps < written
    gamma = written / source
    reached = (delays >= source) & valid
    tau = torch.where(reached.any(dim=1), reached.to(torch.int64).argmax(dim=1) + 1, written[:, 0].to(torch.int64))
    counted = steps < tau[:, None]
    lag = torch.where(counted, delays - steps / gamma, 0.0)
    return lag.sum(dim=1) / tau


def token_strings(tokens: Tensor) -> list[str]:
    """Token id rows -> whitespace-joined word strings (PAD dropped) for SacreBLEU."""
    return [" ".join(f"w{t - FIRST_WORD}" for t in row if t != PAD) for row in tokens.tolist()]


def corpus_bleu(hypotheses: Tensor, references: Tensor) -> float:
    """SacreBLEU corpus BLEU of token-id rows (already tokenised: ``tokenize='none'``)."""
    try:
        import sacrebleu
    except ImportError as error:  # pragma: no cover - a dependency of the extension
        raise ImportError("the mgcm workload needs sacrebleu: pip install sacrebleu") from error
    return float(sacrebleu.corpus_bleu(token_strings(hypotheses), [token_strings(references)], tokenize="none").score)
