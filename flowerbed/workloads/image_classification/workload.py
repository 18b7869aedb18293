"""The image-classification workload: the backdoor setting.

Clients train a classifier with SGD on their partition; the server measures
clean accuracy/loss on the held-out test set and, for every backdoor in the
run, its attack success rate (ASR): the share of test images whose true label
is not the backdoor's target that the trigger flips to the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord
from torch import nn

from flowerbed.platform.cache import cache_dir_for
from flowerbed.platform.errors import ConfigError
from flowerbed.platform.partitioning import partition_indices
from flowerbed.platform.registry import MODELS, WORKLOADS
from flowerbed.platform.seeding import generator
from flowerbed.platform.server_model import ServerModelHooks
from flowerbed.platform.workload import TrainContext, Workload
from flowerbed.workloads.image_classification.data import load_dataset
from flowerbed.workloads.image_classification.data.base import to_float

EVAL_BATCH = 500


@dataclass(frozen=True)
class ClientImages:
    """One client's local training data (uint8 images, int64 labels)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@WORKLOADS.register("image-classification")
class ImageClassification(Workload):
    """Supervised image classification on a registered dataset with a registered model."""

    name = "image-classification"
    supports_attacks = True

    def __init__(self, config, params=None) -> None:
        super().__init__(config, params)
        self.dataset = load_dataset(config.data)
        self.cache_dir = cache_dir_for(config.data.cache_dir)  # partitions are kept beside the data
        # The last ``data.server-size`` training images stay on the server (FLTrust's root data).
        server_size = config.data.server_size
        if server_size >= len(self.dataset.train_labels):
            raise ValueError(f"key 'data.server-size': {server_size} leaves no training images for the clients")
        self.client_pool = len(self.dataset.train_labels) - server_size
        self.root_data = ClientImages(
            self.dataset.train_images[self.client_pool :], self.dataset.train_labels[self.client_pool :]
        )
        self.partitions = self._partition_every_client()

    def _partition_every_client(self) -> list[np.ndarray]:
        """Every client's training indices; a federation the data cannot give each client an image
        is a :class:`ConfigError` here, before anything starts (not a crash inside every client)."""
        num_clients = self.config.num_clients
        if num_clients > self.client_pool:
            raise ConfigError(
                [
                    f"key 'num-clients': {num_clients} clients but only {self.client_pool} training images to"
                    " share (data.train-size minus data.server-size); lower num-clients or use more data"
                ]
            )
        labels = self.dataset.train_labels[: self.client_pool]
        try:
            parts = partition_indices(labels, num_clients, self.config.partition, self.config.seed, self.cache_dir)
        except ValueError as error:
            raise ConfigError([f"{error} (num-clients = {num_clients}, {self.client_pool} images)"]) from None
        empty = [pid for pid, part in enumerate(parts) if len(part) == 0]
        if empty:
            raise ConfigError(
                [
                    f"keys 'num-clients'/'partition.*': partition '{self.config.partition.name}' leaves"
                    f" {len(empty)} of {num_clients} clients without a training image (e.g. client {empty[0]});"
                    " lower num-clients or change the partition"
                ]
            )
        return parts

    def build_model(self) -> nn.Module:
        model = MODELS.get(self.config.model.name)(self.dataset.image_shape, self.dataset.num_classes)
        # Channels-last convolution weights make oneDNN's CPU kernels ~1.5x faster for the
        # same values (benchmarks/memory_format.py); the state dict's shapes are unchanged.
        return model.to(memory_format=torch.channels_last)

    def client_dataset(self, partition_id: int, num_partitions: int) -> ClientImages:
        parts = self.partitions
        if num_partitions != len(parts):  # a node that splits the data otherwise than the config
            labels = self.dataset.train_labels[: self.client_pool]
            parts = partition_indices(labels, num_partitions, self.config.partition, self.config.seed, self.cache_dir)
        indices = torch.from_numpy(parts[partition_id])
        return ClientImages(self.dataset.train_images[indices], self.dataset.train_labels[indices])

    def site_dataset(self, root: str) -> ClientImages:
        """A site's own images: ``root/<label>/<image file>``, one folder per class named by its
        label (0 .. num_classes-1, as the run's dataset numbers them), read with torchvision's
        ImageFolder and brought to the dataset's channels and size."""
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import v2

        channels, height, width = self.dataset.image_shape
        folder = Path(root)
        if not folder.is_dir():
            raise ConfigError([f"node config 'data-root': {root!r} is not a folder on this SuperNode"])
        labels = {name: int(name) for name in (p.name for p in folder.iterdir() if p.is_dir()) if name.isdigit()}
        strays = sorted(p.name for p in folder.iterdir() if p.is_dir() and (p.name not in labels or labels[p.name] >= self.dataset.num_classes))
        if strays or not labels:
            raise ConfigError(
                [f"node config 'data-root': {root!r} needs one folder per class named 0..{self.dataset.num_classes - 1}"
                 f" (found {strays or 'none'})"]
            )
        to_tensor = v2.Compose([v2.PILToTensor(), v2.Resize((height, width), antialias=True)])
        mode = "RGB" if channels == 3 else "L"
        try:
            images = ImageFolder(str(folder), transform=lambda image: to_tensor(image.convert(mode)))
        except (FileNotFoundError, OSError) as error:  # e.g. no image file in any class folder
            raise ConfigError([f"node config 'data-root': {error}"]) from None
        label_of = {index: labels[name] for name, index in images.class_to_idx.items()}
        pixels, targets = zip(*((image, label_of[index]) for image, index in images), strict=True)
        return ClientImages(torch.stack(pixels).to(torch.uint8), torch.tensor(targets, dtype=torch.int64))

    def train(self, model: nn.Module, dataset: ClientImages, context: TrainContext) -> dict[str, float]:
        model.train()
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=context.lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
        )
        total_loss, steps = 0.0, 0
        for _ in range(context.local_epochs):
            order = torch.randperm(len(dataset), generator=context.generator)
            for start in range(0, len(order), context.batch_size):
                batch = order[start : start + context.batch_size]
                images, labels = to_float(dataset.images[batch]), dataset.labels[batch]
                if context.poison_batch is not None:
                    images, labels = context.poison_batch(images, labels)
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(images), labels)
                loss.backward()
                if context.after_backward is not None:
                    context.after_backward(model)
                optimizer.step()
                total_loss += loss.item()
                steps += 1
        return {"train_loss": total_loss / max(steps, 1), "num-examples": len(dataset)}

    def root_epochs(self) -> int:
        """Epochs over the root data that take as many SGD steps as a client of average size takes in a round.

        FLTrust's server computes its update with the clients' own local training (Cao et al.,
        NDSS 2021, Algorithm 1: ``ModelUpdate(w, D0, b, beta, R)``, the same batch size, learning
        rate and R local iterations). With local epochs over 100 root images the server would take
        a few steps where clients take dozens, and since FLTrust rescales every client update to
        the server's norm, every global step would shrink with it.
        """
        batch_size = self.config.batch_size
        client_steps = self.config.local_epochs * math.ceil(self.client_pool / self.config.num_clients / batch_size)
        root_steps_per_epoch = max(1, math.ceil(len(self.root_data) / batch_size))
        return max(1, math.ceil(client_steps / root_steps_per_epoch))

    def server_model_hooks(self) -> ServerModelHooks:
        """What model-aware defences need: the server's update on its root data (FLTrust) and predictions (DeepSight)."""
        def root_update(arrays: ArrayRecord, server_round: int) -> ArrayRecord:
            model = self.build_model()
            model.load_state_dict(arrays.to_torch_state_dict())
            context = TrainContext(
                server_round=server_round,
                partition_id=-1,
                num_partitions=1,
                local_epochs=self.root_epochs(),
                lr=self.config.lr,
                batch_size=self.config.batch_size,
                generator=generator(self.config.seed, "server-root", server_round),
            )
            self.train(model, self.root_data, context)
            return ArrayRecord(model.state_dict())

        @torch.no_grad()
        def predict(arrays: ArrayRecord, inputs: torch.Tensor) -> torch.Tensor:
            model = self.build_model()
            model.load_state_dict(arrays.to_torch_state_dict())
            model.eval()
            # In chunks: DeepSight asks for 20,000 inputs at once, whose activations alone
            # would take gigabytes.
            chunks = [model(inputs[start : start + EVAL_BATCH]) for start in range(0, len(inputs), EVAL_BATCH)]
            return torch.softmax(torch.cat(chunks), dim=1)

        # No root data (``data.server-size = 0``): no root update, and FLTrust refuses to start.
        return ServerModelHooks(
            root_update=root_update if len(self.root_data) else None, predict=predict, input_shape=self.dataset.image_shape
        )

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        model.eval()
        images, labels = self.dataset.test_images, self.dataset.test_labels
        correct, loss_sum = 0, 0.0
        for start in range(0, len(labels), EVAL_BATCH):
            x, y = to_float(images[start : start + EVAL_BATCH]), labels[start : start + EVAL_BATCH]
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
        metrics: dict[str, Any] = {"clean_acc": correct / len(labels), "clean_loss": loss_sum / len(labels)}
        if self.backdoors:
            metrics["asr"] = {backdoor.name: self.attack_success_rate(model, backdoor) for backdoor in self.backdoors}
        return metrics

    @torch.no_grad()
    def attack_success_rate(self, model: nn.Module, backdoor) -> float:
        """Share of the triggered test images the model assigns to the target class: every
        non-target image, or only those of a source-specific backdoor's ``source_classes``."""
        rate = triggered_success(model, self.dataset.test_images, self.dataset.test_labels, backdoor)
        return 0.0 if rate is None else rate

    @torch.no_grad()
    def local_backdoor_accuracy(self, model: nn.Module, dataset: ClientImages, backdoor) -> float | None:
        """The attack success rate on an attacker's own training images (None when it has no
        image the backdoor applies to): whether its local model learned the trigger, which
        the global ASR cannot tell apart from a backdoor that averaging removed."""
        return triggered_success(model, dataset.images, dataset.labels, backdoor)


@torch.no_grad()
def triggered_success(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, backdoor) -> float | None:
    """Share of ``images`` the trigger sends to the backdoor's target, over the images whose label
    is not the target (and, for a source-specific backdoor, is one of its ``source_classes``);
    None when there is no such image."""
    model.eval()
    keep = labels != backdoor.target
    if backdoor.source_classes:
        keep &= torch.isin(labels, torch.tensor(backdoor.source_classes, dtype=labels.dtype))
    images = images[keep]
    if len(images) == 0:
        return None
    hits = 0
    for start in range(0, len(images), EVAL_BATCH):
        triggered = backdoor.trigger.apply(to_float(images[start : start + EVAL_BATCH]))
        hits += (model(triggered).argmax(1) == backdoor.target).sum().item()
    return hits / len(images)
