"""MGCM as a flowerbed Workload: multi-task simultaneous ST on a synthetic corpus.

Paper: Liu et al., "A Modular-based Strategy for Mitigating Gradient Conflicts
in Simultaneous Speech Translation", arXiv:2409.15911. A client trains the
shared Transformer on its share of the corpus with ST as the primary task and
ASR (CTC) and MT as auxiliary tasks; the auxiliary gradients go through the
chosen conflict mitigation (``mgcm`` per module, ``model-level`` on the
flattened gradient, or ``none``). The server scores wait-k decoding with
SacreBLEU and Average Lagging at several k.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from flowerbed.extensions.mgcm.corpus import SimulSTCorpus, SyntheticLanguage, build_corpus
from flowerbed.extensions.mgcm.metrics import average_lagging, corpus_bleu
from flowerbed.extensions.mgcm.model import SimulSTTransformer
from flowerbed.extensions.mgcm.partition import ModulePartition
from flowerbed.extensions.mgcm.streaming import SpeechStream, wait_k_decode
from flowerbed.extensions.mgcm.surgery import GradientSurgery
from flowerbed.extensions.mgcm.tasks import speech_translation_loss, task_losses
from flowerbed.platform.registry import WORKLOADS
from flowerbed.platform.workload import TrainContext, Workload, WorkloadParams


class MGCMParams(WorkloadParams):
    """Hyper-parameters of the MGCM workload (``workload.mgcm.<key>``).

    The paper trains DiSeg (12+6 layers, d=512) on MuST-C En-De; these defaults are a
    CPU-scale stand-in. Task weights default to 1 (the multi-task baseline's weights).
    """

    mitigation: Literal["mgcm", "model-level", "none"] = Field(
        "mgcm", description="gradient-conflict mitigation: mgcm (per module) | model-level (flattened) | none"
    )
    wait_k: int = Field(3, alias="wait-k", ge=1, le=4096, description="wait-k used in training and for the headline bleu/al (chunks)")
    eval_wait_ks: str = Field("1,3,5", alias="eval-wait-ks", description="comma-separated k values scored at evaluation")
    asr_weight: float = Field(1.0, alias="asr-weight", ge=0, description="weight of the ASR (CTC) auxiliary loss; 0 drops it")
    mt_weight: float = Field(1.0, alias="mt-weight", ge=0, description="weight of the MT auxiliary loss; 0 drops it")
    d_model: int = Field(64, alias="d-model", ge=8, le=4096, description="Transformer width")
    num_heads: int = Field(4, alias="num-heads", ge=1, le=4096, description="attention heads (must divide d-model)")
    encoder_layers: int = Field(2, alias="encoder-layers", ge=1, le=4096, description="shared encoder layers")
    decoder_layers: int = Field(2, alias="decoder-layers", ge=1, le=4096, description="shared decoder layers")
    ffn_dim: int = Field(128, alias="ffn-dim", ge=1, le=4096, description="FFN hidden width")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout rate (0 keeps training deterministic per seed)")
    clip_norm: float = Field(1.0, alias="clip-norm", ge=0, description="gradient-norm clip; 0 disables")
    num_words: int = Field(32, alias="num-words", ge=4, le=4096, description="source vocabulary (content words)")
    num_particles: int = Field(4, alias="num-particles", ge=1, le=4096, description="extra target particles of compound words")
    frame_dim: int = Field(16, alias="frame-dim", ge=1, le=4096, description="speech feature dimension")
    min_source_len: int = Field(3, alias="min-source-len", ge=1, le=4096, description="shortest source sentence (words)")
    max_source_len: int = Field(8, alias="max-source-len", ge=1, le=4096, description="longest source sentence (words)")
    min_frames: int = Field(2, alias="min-frames", ge=1, le=4096, description="frames per source word, minimum")
    max_frames: int = Field(4, alias="max-frames", ge=1, le=4096, description="frames per source word, maximum")
    chunk_frames: int = Field(3, alias="chunk-frames", ge=1, le=4096, description="frames per streaming chunk (one wait-k read)")
    frame_noise: float = Field(0.5, alias="frame-noise", ge=0, description="std of the Gaussian noise on speech frames")
    train_size: int = Field(2000, alias="train-size", ge=1, le=1_000_000, description="training triples over all partitions")
    test_size: int = Field(200, alias="test-size", ge=1, le=1_000_000, description="held-out triples scored by evaluate")
    language_seed: int = Field(0, alias="language-seed", description="seed of the synthetic language pair")
    corpus_seed: int = Field(0, alias="corpus-seed", description="seed of the sampled sentences and the partition")

    @field_validator("eval_wait_ks")
    @classmethod
    def _parse_ks(cls, value: str) -> str:
        try:
            ks = [int(k) for k in value.split(",") if k.strip()]
        except ValueError:
            raise ValueError(f"eval-wait-ks must be comma-separated integers, got {value!r}") from None
        if not ks or min(ks) < 1:
            raise ValueError(f"eval-wait-ks needs at least one k and every k >= 1, got {value!r}")
        return ",".join(str(k) for k in ks)

    @model_validator(mode="after")
    def _consistent(self) -> MGCMParams:
        if self.d_model % self.num_heads:
            raise ValueError(f"d-model ({self.d_model}) must be divisible by num-heads ({self.num_heads})")
        if self.min_source_len > self.max_source_len:
            raise ValueError(f"min-source-len ({self.min_source_len}) exceeds max-source-len ({self.max_source_len})")
        if self.min_frames > self.max_frames:
            raise ValueError(f"min-frames ({self.min_frames}) exceeds max-frames ({self.max_frames})")
        return self

    @property
    def eval_ks(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.eval_wait_ks.split(","))

    @property
    def auxiliary_weights(self) -> dict[str, float]:
        """Auxiliary tasks with a positive weight (task name -> weight)."""
        return {name: w for name, w in (("asr", self.asr_weight), ("mt", self.mt_weight)) if w > 0}


@WORKLOADS.register("mgcm")
class MGCMWorkload(Workload):
    """Multi-task simultaneous speech translation with modular gradient-conflict mitigation."""

    name = "mgcm"
    Params = MGCMParams
    params: MGCMParams

    @classmethod
    def check_config(cls, config: Any, params: MGCMParams) -> list[str]:
        """Enough training triples for every client; a label-skew split over the sentence lengths that exist."""
        problems = []
        if config.num_clients > 1 and params.train_size < config.num_clients:
            problems.append(
                f"key 'workload.mgcm.train-size': {params.train_size} triples for num-clients = "
                f"{config.num_clients}; every client needs at least one"
            )
        lengths = params.max_source_len - params.min_source_len + 1
        if config.num_clients > 1 and config.partition.name == "pathological" and config.partition.classes_per_client > lengths:
            problems.append(
                f"key 'partition.classes-per-client': {config.partition.classes_per_client}, but mgcm partitions by "
                f"source length and workload.mgcm.min-source-len..max-source-len gives only {lengths} lengths"
            )
        return problems

    # ------------------------------------------------------------------ data
    @cached_property
    def language(self) -> SyntheticLanguage:
        p = self.params
        return SyntheticLanguage.build(p.num_words, p.num_particles, p.frame_dim, p.language_seed)

    def _corpus(self, size: int, stream: int) -> SimulSTCorpus:
        p = self.params
        return build_corpus(
            self.language, size, p.min_source_len, p.max_source_len, p.min_frames, p.max_frames,
            p.frame_noise, seed=p.corpus_seed * 1_000_003 + stream,
        )

    @cached_property
    def train_corpus(self) -> SimulSTCorpus:
        return self._corpus(self.params.train_size, stream=0)

    @cached_property
    def test_corpus(self) -> SimulSTCorpus:
        return self._corpus(self.params.test_size, stream=1)

    def client_dataset(self, partition_id: int, num_partitions: int) -> SimulSTCorpus:
        """Partition ``partition_id`` of the training corpus (``num_partitions=1``: all of it).

        Split with the run's flwr-datasets partitioner (IID when there is no run config);
        the "label" a label-skew partitioner sees is the source sentence length.
        """
        if num_partitions < 1 or not 0 <= partition_id < num_partitions:
            raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
        corpus = self.train_corpus
        if num_partitions == 1:
            return corpus
        if num_partitions > len(corpus):
            raise ValueError(f"train-size ({len(corpus)}) is smaller than the number of partitions ({num_partitions})")
        from flowerbed.platform.config import PartitionConfig
        from flowerbed.platform.partitioning import partition_indices

        partition_config = getattr(self.config, "partition", None) or PartitionConfig(name="iid")
        labels = corpus.source_lengths - self.params.min_source_len
        parts = partition_indices(labels, num_partitions, partition_config, self.params.corpus_seed)
        return corpus.subset(torch.as_tensor(parts[partition_id]))

    # ----------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        p = self.params
        max_positions = max(p.max_source_len * p.max_frames, 2 * p.max_source_len + 2) + 1
        return SimulSTTransformer(
            frame_dim=p.frame_dim,
            source_vocab=self.language.source_vocab_size,
            target_vocab=self.language.target_vocab_size,
            d_model=p.d_model,
            heads=p.num_heads,
            encoder_layers=p.encoder_layers,
            decoder_layers=p.decoder_layers,
            ffn_dim=p.ffn_dim,
            dropout=p.dropout,
            max_positions=max_positions,
        )

    # ----------------------------------------------------------------- train
    def train(self, model: nn.Module, dataset: SimulSTCorpus, context: TrainContext) -> dict[str, float]:
        """One round: ``local_epochs`` passes of multi-task training (Adam at ``context.lr``).

        Returns the mean primary (ST) loss as ``train_loss``, the auxiliary losses, and
        conflict statistics of the raw gradients: ``conflict_rate`` (share of
        (auxiliary, module) pairs with cos < 0), ``model_conflict_rate`` (share of
        (auxiliary, step) pairs with a negative model-level cosine) and
        ``masked_conflict_rate`` (module conflicts the model-level cosine hides).
        """
        p = self.params
        weights = p.auxiliary_weights
        surgery = GradientSurgery(ModulePartition.from_model(model), p.mitigation, tuple(weights.values()))
        optimizer = torch.optim.Adam(model.parameters(), lr=context.lr)
        model.train()
        totals = {"st": 0.0, "asr": 0.0, "mt": 0.0}
        conflicts, model_conflicts, masked, steps, seen = 0.0, 0.0, 0.0, 0, 0
        for _ in range(context.local_epochs):
            for batch in dataset.batches(context.batch_size, context.generator):
                losses = task_losses(model, batch, p.wait_k, p.chunk_frames)
                report = surgery.backward(losses["st"], [losses[name] for name in weights])
                if p.clip_norm > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), p.clip_norm)
                optimizer.step()
                n = len(batch)
                for name, loss in losses.items():
                    totals[name] += float(loss.detach()) * n
                if weights:
                    conflicts += report.conflict_rate()
                    model_conflicts += float(report.model_conflicts.float().mean())
                    masked += float(report.masked.float().mean())
                steps += 1
                seen += n
        return {
            "train_loss": totals["st"] / max(seen, 1),
            "asr_loss": totals["asr"] / max(seen, 1),
            "mt_loss": totals["mt"] / max(seen, 1),
            "conflict_rate": conflicts / max(steps, 1),
            "model_conflict_rate": model_conflicts / max(steps, 1),
            "masked_conflict_rate": masked / max(steps, 1),
            "num-examples": len(dataset),
        }

    # -------------------------------------------------------------- evaluate
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """BLEU and AL (frames) of greedy wait-k decoding on the test corpus.

        ``bleu``/``al`` are at the training ``wait-k``; ``bleu_k{k}``/``al_k{k}`` at every
        ``eval-wait-ks`` value; ``bleu_offline``/``al_offline`` read the whole source first;
        ``test_loss`` is the teacher-forced ST loss at ``wait-k``.
        """
        p = self.params
        test = self.test_corpus
        model.eval()
        metrics: dict[str, Any] = {
            "test_loss": float(speech_translation_loss(model, test, p.wait_k, p.chunk_frames))
        }
        max_length = 2 * p.max_source_len + 1
        for k in sorted({*p.eval_ks, p.wait_k}):
            bleu, al = self._score(model, test, k, max_length)
            metrics[f"bleu_k{k}"], metrics[f"al_k{k}"] = bleu, al
        metrics["bleu_offline"], metrics["al_offline"] = self._score(model, test, None, max_length)
        metrics["bleu"], metrics["al"] = metrics[f"bleu_k{p.wait_k}"], metrics[f"al_k{p.wait_k}"]
        return metrics

    def _score(self, model: nn.Module, test: SimulSTCorpus, wait_k: int | None, max_length: int) -> tuple[float, float]:
        stream = SpeechStream(test.frames, test.frame_lengths, self.params.chunk_frames)
        result = wait_k_decode(model, stream, wait_k, max_length)
        bleu = corpus_bleu(result.tokens, test.target)
        al = float(average_lagging(result.delays, result.lengths, test.frame_lengths).mean())
        return bleu, al

    def headline_metric(self) -> tuple[str, str]:
        return "bleu", "max"
