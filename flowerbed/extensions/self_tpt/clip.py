"""A frozen CLIP from ``transformers`` and the text path prompt learning needs.

``build_clip`` makes a small CLIP from a config with random weights (tests, the offline
benchmark, which then pre-trains it contrastively); ``pretraining.load_pretrained`` loads a
saved one (``from_pretrained(..., local_files_only=True)``: never a download). Prompt learning
(CoOp, Zhou et al. 2022) feeds learned vectors where word embeddings would go, so the text
features are computed from token *embeddings*: ``text_features_from_embeddings`` runs CLIP's
own text modules (embeddings with positions, causal encoder, final norm, projection of the
end-of-text state) on them; with the embeddings of real tokens it equals
``CLIPModel.get_text_features``.
"""

from __future__ import annotations

import torch
from torch import nn

# Word-level vocabulary of the small CLIP (a real checkpoint brings its own BPE tokenizer).
SPECIAL_TOKENS = ("<pad>", "<sot>", "<unk>", "<eot>")  # <eot> is not id 2: CLIP then pools at its position
MAX_TOKENS = 16


class WordTokenizer:
    """Lower-case words to ids over a fixed vocabulary: ``<sot> words <eot> <pad>...``."""

    def __init__(self, words: list[str]) -> None:
        self.vocabulary = list(SPECIAL_TOKENS) + sorted(set(words) - set(SPECIAL_TOKENS))
        self.index = {word: i for i, word in enumerate(self.vocabulary)}
        self.pad_id, self.sot_id, self.unk_id, self.eot_id = (self.index[t] for t in SPECIAL_TOKENS)

    def words(self, text: str) -> list[int]:
        """The ids of ``text``'s words, without start/end tokens."""
        return [self.index.get(word, self.unk_id) for word in text.lower().split()]

    def __call__(self, texts: list[str], length: int = MAX_TOKENS) -> torch.Tensor:
        rows = []
        for text in texts:
            ids = [self.sot_id, *self.words(text), self.eot_id]
            if len(ids) > length:
                raise ValueError(f"{text!r} needs {len(ids)} tokens, more than {length}")
            rows.append(ids + [self.pad_id] * (length - len(ids)))
        return torch.tensor(rows)


def small_clip_config(vocab_size: int, eot_id: int, width: int, layers: int, embed_dim: int, image_size: int = 32):
    from transformers import CLIPConfig

    text = {
        "vocab_size": vocab_size, "hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": layers,
        "num_attention_heads": max(1, width // 32), "max_position_embeddings": MAX_TOKENS,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": eot_id,
    }
    vision = {
        "image_size": image_size, "patch_size": 8, "hidden_size": width, "intermediate_size": 2 * width,
        "num_hidden_layers": layers, "num_attention_heads": max(1, width // 32), "num_channels": 3,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)


# Gradient matching differentiates a gradient (second order); PyTorch's fused CPU attention
# kernel has no double backward, CLIP's plain ("eager") attention does.
ATTENTION = "eager"


def build_clip(config) -> nn.Module:
    from transformers import CLIPModel

    config._attn_implementation = ATTENTION
    return CLIPModel(config)


def freeze(clip: nn.Module) -> nn.Module:
    """Eval mode, no gradients: Self-TPT and CoOp train only the prompt."""
    clip.eval()
    for parameter in clip.parameters():
        parameter.requires_grad_(False)
    return clip


def word_embeddings(clip: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    return clip.text_model.embeddings.token_embedding(token_ids)


def text_features_from_embeddings(clip: nn.Module, embeddings: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
    """CLIP text features [B, D] of token embeddings [B, L, W] whose end-of-text token sits at
    ``eot_positions`` [B]; not normalised."""
    from transformers.masking_utils import create_causal_mask

    text = clip.text_model
    hidden = text.embeddings(inputs_embeds=embeddings)
    mask = create_causal_mask(config=text.config, inputs_embeds=hidden, attention_mask=None, cache=None)
    hidden = text.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
    hidden = text.final_layer_norm(hidden)
    return clip.text_projection(hidden[torch.arange(len(hidden)), eot_positions])


def image_features(clip: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """CLIP image features [B, D] of preprocessed pixels; not normalised."""
    return clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)


def preprocess(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> CLIP's normalised float pixels at ``image_size``."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    pixels = images.float() / 255.0
    if pixels.shape[-1] != image_size:
        pixels = torch.nn.functional.interpolate(pixels, size=(image_size, image_size), mode="bicubic", align_corners=False)
    return (pixels - mean) / std
