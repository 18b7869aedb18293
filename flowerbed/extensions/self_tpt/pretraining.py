"""Contrastive pre-training of the small CLIP on generated image-caption pairs, cached.

Without pre-trained weights there is no zero-shot transfer for prompt tuning to improve, so the
offline setting first trains the small CLIP with CLIP's own symmetric InfoNCE loss (Radford et
al., ICML 2021) on coloured digits and captions such as "a picture of the red seven", over all
40 classes. The result is saved with ``save_pretrained`` (plus the word vocabulary) in
``<cache>/self-tpt-clip/<settings>/`` and loaded from there by every later run and process.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from flowerbed.extensions.self_tpt import clip as clip_ops
from flowerbed.extensions.self_tpt.data import ALL_CLASSES, CAPTION_TEMPLATES, DIGIT_WORDS, HAND_CRAFTED_TEMPLATE, COLOURS, make_images

VOCABULARY_FILE = "flowerbed-vocabulary.json"


def vocabulary_words() -> list[str]:
    words = set(DIGIT_WORDS) | set(COLOURS)
    for template in (*CAPTION_TEMPLATES, HAND_CRAFTED_TEMPLATE):
        words |= set(template.replace("{}", "").split())
    return sorted(words)


def pretrained_clip(cache_dir: Path, width: int, layers: int, embed_dim: int, steps: int, images: int, seed: int):
    """(CLIPModel, WordTokenizer) pre-trained with these settings: from the cache, or trained now."""
    folder = Path(cache_dir) / "self-tpt-clip" / f"w{width}-l{layers}-d{embed_dim}-steps{steps}-images{images}-seed{seed}"
    if not (folder / VOCABULARY_FILE).is_file():
        clip, tokenizer, seconds = pretrain(width, layers, embed_dim, steps, images, seed)
        staging = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        clip.save_pretrained(staging)
        (staging / VOCABULARY_FILE).write_text(json.dumps({"words": tokenizer.vocabulary, "pretrain_seconds": seconds}))
        try:
            os.replace(staging, folder)  # atomic; another process may have finished first
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return load_pretrained(folder)


def load_pretrained(folder: Path):
    from transformers import CLIPModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" in every client process
    words = json.loads((folder / VOCABULARY_FILE).read_text())["words"]
    tokenizer = clip_ops.WordTokenizer(words)
    return CLIPModel.from_pretrained(str(folder), local_files_only=True, attn_implementation=clip_ops.ATTENTION), tokenizer


def pretrain(width: int, layers: int, embed_dim: int, steps: int, images: int, seed: int, batch_size: int = 128):
    """Train a small CLIP from random weights; returns (clip, tokenizer, seconds)."""
    began = time.perf_counter()
    tokenizer = clip_ops.WordTokenizer(vocabulary_words())
    torch.manual_seed(seed)
    config = clip_ops.small_clip_config(len(tokenizer.vocabulary), tokenizer.eot_id, width, layers, embed_dim)
    clip = clip_ops.build_clip(config)
    data = make_images(images, tuple(range(len(ALL_CLASSES))), seed=seed + 1000)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=max(steps, 1), pct_start=0.1)
    clip.train()
    for _ in range(steps):
        batch = torch.randint(len(data), (batch_size,), generator=generator)
        templates = torch.randint(len(CAPTION_TEMPLATES), (batch_size,), generator=generator)
        captions = [CAPTION_TEMPLATES[int(t)].format(ALL_CLASSES[int(c)].name) for t, c in zip(templates, data.labels[batch], strict=True)]
        ids = tokenizer(captions)
        text = F.normalize(clip_ops.text_features_from_embeddings(clip, clip_ops.word_embeddings(clip, ids), (ids == tokenizer.eot_id).int().argmax(-1)), dim=-1)
        image = F.normalize(clip_ops.image_features(clip, clip_ops.preprocess(data.images[batch], 32)), dim=-1)
        logits = clip.logit_scale.exp().clamp(max=100) * image @ text.T
        # Captions of the same class are positives of each other, not negatives.
        same = (data.labels[batch][:, None] == data.labels[batch][None, :]).float()
        targets = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    clip.eval()
    return clip, tokenizer, time.perf_counter() - began
