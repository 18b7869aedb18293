"""The learnable prompt (CoOp) and the text "views" of Contrastive Prompt Tuning (Self-TPT).

CoOp (Zhou et al., IJCV 2022): M context vectors shared by all classes replace the words of a
template; class c's text is ``<sot> ctx_1..ctx_M name_c <eot>``. Self-TPT's CPT (Zhu et al.,
arXiv:2408.05775) makes several texts per class from the same context by moving the class name
to the front, the middle or the end of the context, plus the hand-crafted prompt, and pulls a
class's views together while pushing classes apart; CPT's features pass through a small
projection head (the paper's h, trained with the prompt; its shape is our choice).
"""

from __future__ import annotations

import torch
from torch import nn

from flowerbed.extensions.self_tpt import clip as clip_ops

VIEWS = ("end", "middle", "front")  # where the class name sits among the context vectors


class PromptLearner(nn.Module):
    """What a client trains and sends: the context vectors and CPT's projection head. The frozen
    CLIP is passed in, never registered, so the state dict holds only these parameters."""

    def __init__(self, context: torch.Tensor, head_dim: int) -> None:
        super().__init__()
        self.context = nn.Parameter(context.clone())  # [M, W]
        self.head = nn.Sequential(nn.Linear(head_dim, head_dim), nn.ReLU(), nn.Linear(head_dim, head_dim))


def initial_context(clip: nn.Module, tokenizer, init_words: str) -> torch.Tensor:
    """The word embeddings of ``init_words`` ("a photo of a": CoOp's initialisation)."""
    ids = torch.tensor(tokenizer.words(init_words))
    with torch.no_grad():
        return clip_ops.word_embeddings(clip, ids).clone()


class ClassTexts:
    """Token ids of every class name, ready to be combined with a context."""

    def __init__(self, tokenizer, names: list[str]) -> None:
        self.tokenizer = tokenizer
        self.names = names
        self.name_ids = [torch.tensor(tokenizer.words(name)) for name in names]
        self.hand_crafted = tokenizer([f"a photo of a {name}" for name in names])

    def embeddings(self, clip: nn.Module, context: torch.Tensor, view: str) -> tuple[torch.Tensor, torch.Tensor]:
        """[C, L, W] embeddings of ``<sot> (context with the name at `view`) <eot> <pad>..`` and the
        position of each <eot>."""
        tokenizer = self.tokenizer
        sot, eot, pad = (clip_ops.word_embeddings(clip, torch.tensor([i]))[0] for i in (tokenizer.sot_id, tokenizer.eot_id, tokenizer.pad_id))
        split = {"end": len(context), "middle": len(context) // 2, "front": 0}[view]
        rows, positions = [], []
        for ids in self.name_ids:
            name = clip_ops.word_embeddings(clip, ids)
            parts = [sot[None], context[:split], name, context[split:], eot[None]]
            row = torch.cat(parts)
            positions.append(len(row) - 1)
            padding = clip_ops.MAX_TOKENS - len(row)
            if padding < 0:
                raise ValueError(f"the prompt for {self.names[len(rows)]!r} needs {len(row)} tokens, more than {clip_ops.MAX_TOKENS}")
            rows.append(torch.cat([row, pad[None].expand(padding, -1)]))
        return torch.stack(rows), torch.tensor(positions)

    def features(self, clip: nn.Module, context: torch.Tensor, view: str = "end") -> torch.Tensor:
        """Normalised text features [C, D] of every class under ``context`` and ``view``."""
        embeddings, positions = self.embeddings(clip, context, view)
        return nn.functional.normalize(clip_ops.text_features_from_embeddings(clip, embeddings, positions), dim=-1)

    def hand_crafted_features(self, clip: nn.Module) -> torch.Tensor:
        """Normalised features of "a photo of a {name}" (the zero-shot baseline, and CPT's fixed view)."""
        ids = self.hand_crafted
        positions = (ids == self.tokenizer.eot_id).int().argmax(-1)
        with torch.no_grad():
            features = clip_ops.text_features_from_embeddings(clip, clip_ops.word_embeddings(clip, ids), positions)
        return nn.functional.normalize(features, dim=-1)
