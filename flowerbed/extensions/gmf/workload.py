"""GMF multimodal fusion as a flowerbed Workload, trained locally (one client) or federated (FedAvg).

Xiong et al., "Generalized Multimodal Fusion via Poisson-Nernst-Planck Equation"
(arXiv:2410.15475). A multimodal classifier is trained with cross-entropy plus,
when a GMF frontend is used, its reconstruction loss (and the optional
concentration / decorrelation extras). ``fusion`` picks the arm: plain
concatenation, attention fusion, or GMF in front of either. Evaluation reports
accuracy with every modality and with each modality missing (zeroed and masked),
the parameter count and the inference FLOPs per example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from flowerbed.extensions.gmf.cost import count_inference_flops, count_parameters
from flowerbed.extensions.gmf.data import MultimodalData, train_test_split
from flowerbed.extensions.gmf.model import FusionClassifier, build_fusion_classifier
from flowerbed.extensions.gmf.sources import FEATURE_FILE_HELP, load_feature_file, make_digits_views, make_synthetic
from flowerbed.platform.registry import WORKLOADS
from flowerbed.platform.workload import TrainContext, Workload, WorkloadParams


def parse_dims(text: str) -> tuple[int, ...]:
    """'32,48,16' -> (32, 48, 16); at least two positive integers."""
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError as error:
        raise ValueError(f"expected comma-separated integers such as '32,48,16', got {text!r}") from error
    if len(dims) < 2 or min(dims) < 1:
        raise ValueError(f"need at least two positive modality dimensions, got {text!r}")
    return dims


class GMFParams(WorkloadParams):
    """Hyper-parameters of ``workload.gmf.*`` (CPU-small sizes; the paper's frontend is a few
    linear layers on top of pretrained unimodal extractors, trained with task + reconstruction loss)."""

    # Model
    fusion: Literal["gmf", "concat", "attention", "gmf+attention"] = Field(
        "gmf", description="gmf = GMF frontend + concatenation backend; concat / attention = baselines on raw "
        "features; gmf+attention = GMF frontend + attention backend"
    )
    specific_dim: int = Field(16, alias="specific-dim", ge=1, le=4096, description="size of each modality-specific subspace")
    invariant_dim: int = Field(16, alias="invariant-dim", ge=1, le=4096, description="size of the modality-invariant subspace")
    hidden_dim: int = Field(64, alias="hidden-dim", ge=1, le=4096, description="hidden width of the concatenation classifier")
    attention_dim: int = Field(64, alias="attention-dim", ge=1, le=4096, description="token width of the attention fusion")
    attention_heads: int = Field(4, alias="attention-heads", ge=1, le=4096, description="attention heads")
    attention_layers: int = Field(2, alias="attention-layers", ge=1, le=4096, description="Transformer encoder layers")
    # Loss weights (total = cross-entropy + weights x GMF losses; ignored without a GMF frontend)
    reconstruction_weight: float = Field(
        1.0, alias="reconstruction-weight", ge=0.0, description="self + cyclic cross reconstruction (the paper's)"
    )
    concentration_weight: float = Field(
        0.0, alias="concentration-weight", ge=0.0, description="extra, not in the paper: pull invariant parts together"
    )
    decorrelation_weight: float = Field(
        0.0, alias="decorrelation-weight", ge=0.0, description="extra, not in the paper: decorrelate specific/invariant"
    )
    modality_dropout: float = Field(
        0.0, alias="modality-dropout", ge=0.0, lt=1.0,
        description="train-time chance of dropping each modality of a sample (one always stays); 0 = off",
    )
    # Data
    dataset: Literal["synthetic", "digits", "features"] = Field(
        "synthetic", description="synthetic generator, three views of sklearn digits, or 'features' (needs data-path)"
    )
    data_path: str = Field("", alias="data-path", description="local .npz of pre-extracted features for 'features'")
    dims: str = Field("32,48,16", description="synthetic: comma-separated dimension of each modality")
    num_samples: int = Field(3000, alias="num-samples", ge=20, le=1_000_000, description="synthetic: examples generated")
    num_classes: int = Field(10, alias="num-classes", ge=2, le=4096, description="synthetic: classes")
    shared_dim: int = Field(8, alias="shared-dim", ge=1, le=4096, description="synthetic: size of the shared (label) factor")
    private_dim: int = Field(8, alias="private-dim", ge=0, le=4096, description="synthetic: size of each private nuisance")
    shared_noise: float = Field(1.0, alias="shared-noise", ge=0.0, description="synthetic: per-modality noise std")
    private_scale: float = Field(2.0, alias="private-scale", ge=0.0, description="synthetic: nuisance std")
    lowres_noise: float = Field(0.3, alias="lowres-noise", ge=0.0, description="digits: noise std of the 4x4 view")
    test_fraction: float = Field(0.25, alias="test-fraction", gt=0.0, lt=1.0, description="held-out share")
    data_seed: int = Field(
        0, alias="data-seed", description="seeds data generation, the train/test split and the client partition"
    )
    eval_batch_size: int = Field(512, alias="eval-batch-size", ge=1, le=1_000_000, description="batch size of evaluation")

    @field_validator("dims")
    @classmethod
    def _check_dims(cls, value: str) -> str:
        parse_dims(value)
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> GMFParams:
        if self.attention_dim % self.attention_heads:
            raise ValueError(
                f"attention-dim ({self.attention_dim}) must be divisible by attention-heads ({self.attention_heads})"
            )
        if self.dataset == "features" and not self.data_path:
            raise ValueError(f"dataset = 'features' needs data-path; {FEATURE_FILE_HELP}")
        if self.data_path and self.dataset != "features":
            raise ValueError(f"data-path is set but dataset = {self.dataset!r}; set dataset = 'features' to use it")
        if self.data_path and not Path(self.data_path).expanduser().is_file():
            raise ValueError(f"data-path: no file at '{self.data_path}'; {FEATURE_FILE_HELP}")
        return self


@WORKLOADS.register("gmf")
class GMFWorkload(Workload):
    """Multimodal classification with GMF or baseline fusion; judged by accuracy, also with a modality missing."""

    name = "gmf"
    Params = GMFParams
    params: GMFParams

    def __init__(self, config: Any = None, params: GMFParams | None = None) -> None:
        super().__init__(config, params)
        self._split: tuple[MultimodalData, MultimodalData] | None = None

    @classmethod
    def check_config(cls, config: Any, params: GMFParams) -> list[str]:
        """Enough synthetic examples for every client; a label-skew split over classes that exist."""
        problems = []
        if config.num_clients > 1 and params.dataset == "synthetic":
            train_rows = params.num_samples - max(1, int(round(params.test_fraction * params.num_samples)))
            if train_rows < config.num_clients:
                problems.append(
                    f"key 'workload.gmf.num-samples': {params.num_samples} examples leave {train_rows} "
                    f"training rows for num-clients = {config.num_clients}; every client needs at least one"
                )
        num_classes = {"synthetic": params.num_classes, "digits": 10}.get(params.dataset)
        partition = config.partition
        if (
            config.num_clients > 1 and num_classes is not None and partition.name == "pathological"
            and partition.classes_per_client > num_classes
        ):
            problems.append(
                f"key 'partition.classes-per-client': {partition.classes_per_client}, but the gmf "
                f"'{params.dataset}' data has only {num_classes} classes"
            )
        return problems

    # ----------------------------------------------------------------- data
    def _load(self) -> MultimodalData:
        p = self.params
        if p.dataset == "synthetic":
            return make_synthetic(
                p.num_samples, parse_dims(p.dims), p.num_classes, p.shared_dim, p.private_dim,
                p.shared_noise, p.private_scale, p.data_seed,
            )
        if p.dataset == "digits":
            return make_digits_views(p.lowres_noise, p.data_seed)
        return load_feature_file(p.data_path)

    @property
    def split(self) -> tuple[MultimodalData, MultimodalData]:
        """(train, test), standardised with training statistics; built once."""
        if self._split is None:
            self._split = train_test_split(self._load(), self.params.test_fraction, self.params.data_seed)
        return self._split

    @property
    def train_data(self) -> MultimodalData:
        return self.split[0]

    @property
    def test_data(self) -> MultimodalData:
        return self.split[1]

    def client_dataset(self, partition_id: int, num_partitions: int) -> MultimodalData:
        """This client's share of the training set; ``num_partitions = 1`` gives all of it.

        Split by the run's flwr-datasets partitioner (``partition.name``: iid, dirichlet over the
        class labels, pathological), seeded by ``data-seed``; IID when there is no run config.
        """
        if num_partitions < 1:
            raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
        if not 0 <= partition_id < num_partitions:
            raise ValueError(f"partition_id {partition_id} is outside 0..{num_partitions - 1}")
        train = self.train_data
        if num_partitions == 1:
            return train
        from flowerbed.platform.config import PartitionConfig
        from flowerbed.platform.partitioning import partition_indices

        partition_config = getattr(self.config, "partition", None) or PartitionConfig(name="iid")
        parts = partition_indices(train.labels, num_partitions, partition_config, self.params.data_seed)
        return train.subset(torch.as_tensor(parts[partition_id], dtype=torch.int64))

    # ---------------------------------------------------------------- model
    def build_model(self) -> FusionClassifier:
        p = self.params
        return build_fusion_classifier(
            p.fusion, self.train_data.dims, self.train_data.num_classes,
            hidden_dim=p.hidden_dim, specific_dim=p.specific_dim, invariant_dim=p.invariant_dim,
            attention_dim=p.attention_dim, attention_heads=p.attention_heads, attention_layers=p.attention_layers,
        )

    def loss(
        self, model: FusionClassifier, features: list[torch.Tensor], labels: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy plus the weighted GMF losses; also returns each term's value."""
        output = model(features, present)
        total = F.cross_entropy(output.logits, labels)
        terms = {"task": total.item()}
        if model.frontend is not None and output.frontend is not None:
            p = self.params
            weights = {
                "reconstruction": p.reconstruction_weight,
                "concentration": p.concentration_weight,
                "decorrelation": p.decorrelation_weight,
            }
            for name, value in model.frontend.losses(output.frontend, features, present).items():
                terms[name] = value.item()
                if weights[name] > 0:
                    total = total + weights[name] * value
        return total, terms

    def _drop_modalities(self, batch: int, num_modalities: int, generator: torch.Generator) -> torch.Tensor:
        """(B, M) presence mask with each modality kept with prob 1 - modality-dropout, at least one kept."""
        present = torch.rand(batch, num_modalities, generator=generator) >= self.params.modality_dropout
        keep = torch.randint(num_modalities, (batch,), generator=generator)
        present[torch.arange(batch), keep] = True
        return present

    def train(self, model: FusionClassifier, dataset: MultimodalData, context: TrainContext) -> dict[str, float]:
        """``local_epochs`` passes of Adam over the client's data; returns mean loss terms."""
        if context.poison_batch is not None:
            raise ValueError("the gmf workload trains on multimodal batches; poison_batch hooks are not supported")
        if len(dataset) == 0:
            return {"train_loss": 0.0, "num-examples": 0}
        optimizer = torch.optim.Adam(model.parameters(), lr=context.lr)
        model.train()
        num_modalities = len(dataset.features)
        sums: dict[str, float] = {}
        steps = 0
        for _ in range(context.local_epochs):
            order = torch.randperm(len(dataset), generator=context.generator)
            for batch_indices in order.split(context.batch_size):
                features = [x[batch_indices] for x in dataset.features]
                labels = dataset.labels[batch_indices]
                if self.params.modality_dropout > 0:
                    present = self._drop_modalities(len(labels), num_modalities, context.generator)
                    features = [x * present[:, i : i + 1] for i, x in enumerate(features)]
                else:
                    present = torch.ones(len(labels), num_modalities, dtype=torch.bool)
                loss, terms = self.loss(model, features, labels, present)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                for name, value in {"train_loss": loss.item(), **terms}.items():
                    sums[name] = sums.get(name, 0.0) + value
                steps += 1
        metrics = {name if name == "train_loss" else f"train_{name}_loss": value / steps for name, value in sums.items()}
        return {**metrics, "num-examples": len(dataset)}

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def accuracy(self, model: FusionClassifier, data: MultimodalData, missing: int | None = None) -> float:
        """Accuracy on ``data``; modality index ``missing`` (if given) is zeroed and masked out."""
        model.eval()
        correct = 0
        for start in range(0, len(data), self.params.eval_batch_size):
            rows = slice(start, start + self.params.eval_batch_size)
            features = [x[rows] for x in data.features]
            present = torch.ones(features[0].shape[0], len(features), dtype=torch.bool)
            if missing is not None:
                features[missing] = torch.zeros_like(features[missing])
                present[:, missing] = False
            correct += (model(features, present).logits.argmax(dim=-1) == data.labels[rows]).sum().item()
        return correct / len(data)

    def evaluate(self, model: FusionClassifier) -> dict[str, Any]:
        test = self.test_data
        metrics: dict[str, Any] = {"acc": self.accuracy(model, test)}
        for index, name in enumerate(test.modalities):
            metrics[f"acc_missing_{name}"] = self.accuracy(model, test, missing=index)
        metrics["params"] = count_parameters(model)
        metrics["flops"] = count_inference_flops(model, test.dims)
        return metrics

    def headline_metric(self) -> tuple[str, str]:
        return "acc", "max"
