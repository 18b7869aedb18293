"""Local Flow Matching as a flowerbed Workload, trained locally (one client) or federated (FedAvg).

Xu, Cheng & Xie, "Local Flow Matching Generative Models" (arXiv:2410.02548). The model is one
:class:`LocalFlowChain` holding every block, so FedAvg averages a single state_dict. Rounds are
split evenly among blocks: round r trains block ``(r - 1) // rounds-per-block`` on the client's
data pushed forward through the blocks before it (already trained and averaged), so a run
needs ``num-blocks * rounds-per-block`` rounds. With ``distill`` on, every round also fits the
block's one-step map to the block's ODE endpoints (local velocity of that round; FedAvg then
averages the maps as it averages the velocities). ``num-blocks = 1`` with the free final block
is a global flow-matching model (the paper's FM baseline).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from flowerbed.extensions.lfm.chain import LocalFlowChain
from flowerbed.extensions.lfm.data import TOY_DATASETS, SplitData, iid_partition, load_split
from flowerbed.extensions.lfm.metrics import energy_distance, mmd_rbf, sliced_wasserstein
from flowerbed.extensions.lfm.ou import geometric_step_sizes, parse_step_sizes
from flowerbed.extensions.lfm.training import train_one_step_map, train_velocity_block, warm_start
from flowerbed.platform.registry import WORKLOADS
from flowerbed.platform.workload import TrainContext, Workload, WorkloadParams


class LocalFlowMatchingParams(WorkloadParams):
    """Hyper-parameters of ``workload.lfm.*``. Sizes are CPU-small (the paper's 2-D runs use
    256x3 MLPs, 8 OU blocks + 1 free block, 50k iterations per block); the block structure,
    free final block, trig interpolant and warm start follow the official code."""

    # Data
    dataset: Literal[
        "moons", "circles", "eight-gaussians", "checkerboard", "swiss-roll",
        "breast-cancer", "wine", "diabetes", "digits", "file",
    ] = Field("moons", description="2-D toy generator, a scikit-learn bundled set, or 'file' (needs data-path)")
    data_path: str = Field("", alias="data-path", description="local .npy/.csv table (rows = samples) for dataset 'file'")
    num_samples: int = Field(5000, alias="num-samples", ge=10, le=1_000_000, description="points drawn from a toy generator")
    noise: float = Field(0.05, ge=0.0, description="Gaussian jitter std of the toy generators (raw units)")
    test_fraction: float = Field(0.2, alias="test-fraction", gt=0.0, lt=1.0, description="held-out share")
    data_seed: int = Field(0, alias="data-seed", description="seeds data generation and the train/test split")
    # Chain
    num_blocks: int = Field(5, alias="num-blocks", ge=1, le=4096, description="sub-models N, the free final block included")
    free_final_block: bool = Field(True, alias="free-final-block", description="last block maps straight to N(0, I)")
    step_sizes: str = Field("", alias="step-sizes", description="comma-separated OU times h_n; empty = geometric")
    step_size_first: float = Field(0.05, alias="step-size-first", gt=0.0, description="h_1 of the geometric schedule")
    step_size_growth: float = Field(2.0, alias="step-size-growth", gt=0.0, description="h_{n+1} / h_n (geometric)")
    hidden_width: int = Field(64, alias="hidden-width", ge=1, le=4096, description="width of each block's velocity MLP")
    hidden_layers: int = Field(3, alias="hidden-layers", ge=1, le=4096, description="hidden layers of each velocity MLP")
    interpolant: Literal["linear", "trig"] = Field("trig", description="I_t between x_l and x_r (official default trig)")
    ode_steps: int = Field(10, alias="ode-steps", ge=1, le=4096, description="RK4 steps per block (push-forward, sampling, NLL)")
    # Schedule
    rounds_per_block: int = Field(1, alias="rounds-per-block", ge=1, le=4096, description="rounds spent on each block")
    steps_per_round: int = Field(300, alias="steps-per-round", ge=1, le=1_000_000, description="optimiser steps per local epoch")
    warm_start: bool = Field(True, alias="warm-start", description="start block n from block n-1's weights")
    # Distillation
    distill: bool = Field(True, description="also fit a one-step map per block (endpoint regression)")
    distill_steps: int = Field(300, alias="distill-steps", ge=1, le=1_000_000, description="one-step-map steps per local epoch")
    distill_width: int = Field(64, alias="distill-width", ge=1, le=4096, description="width of each one-step map")
    distill_layers: int = Field(3, alias="distill-layers", ge=1, le=4096, description="hidden layers of each one-step map")
    # Evaluation
    eval_samples: int = Field(1000, alias="eval-samples", ge=2, le=1_000_000, description="samples generated per evaluation")
    nll_max_dim: int = Field(16, alias="nll-max-dim", ge=0, le=4096, description="report test NLL only up to this dimension")
    eval_seed: int = Field(0, alias="eval-seed", description="seeds the evaluation noise and projections")

    @model_validator(mode="after")
    def _check_consistency(self) -> "LocalFlowMatchingParams":
        num_ou_blocks = self.num_blocks - int(self.free_final_block)
        if num_ou_blocks == 0 and not self.free_final_block:
            raise ValueError("num-blocks must be >= 1")
        if self.step_sizes.strip():
            try:
                sizes = parse_step_sizes(self.step_sizes)
            except ValueError as error:
                raise ValueError(f"step-sizes: {error}") from error
            if len(sizes) != num_ou_blocks:
                raise ValueError(
                    f"step-sizes lists {len(sizes)} values but num-blocks = {self.num_blocks} "
                    f"with free-final-block = {self.free_final_block} has {num_ou_blocks} OU blocks"
                )
        if self.dataset == "file" and not self.data_path:
            raise ValueError("dataset = 'file' needs data-path (a local .npy or .csv table)")
        if self.data_path and self.dataset != "file":
            raise ValueError(f"data-path is set but dataset = {self.dataset!r}; set dataset = 'file' to use it")
        if self.data_path and not Path(self.data_path).expanduser().is_file():
            raise ValueError(
                f"data-path: no file at '{self.data_path}'; put a numeric table there "
                "(.npy 2-D float array, or .csv with an optional header row; rows = samples)"
            )
        return self

    def step_size_schedule(self) -> tuple[float, ...]:
        """The OU times h_n of the OU blocks, data side first."""
        if self.step_sizes.strip():
            return parse_step_sizes(self.step_sizes)
        num_ou_blocks = self.num_blocks - int(self.free_final_block)
        return geometric_step_sizes(num_ou_blocks, self.step_size_first, self.step_size_growth)


@WORKLOADS.register("lfm")
class LocalFlowMatchingWorkload(Workload):
    """Generative modelling with a chain of local flow-matching blocks; judged by sample quality."""

    name = "lfm"
    Params = LocalFlowMatchingParams
    params: LocalFlowMatchingParams

    def __init__(self, config: Any = None, params: LocalFlowMatchingParams | None = None) -> None:
        super().__init__(config, params)
        self._data: SplitData | None = None

    @property
    def data(self) -> SplitData:
        """The standardised train/test split (loaded once)."""
        if self._data is None:
            p = self.params
            self._data = load_split(
                p.dataset, num_samples=p.num_samples, noise=p.noise,
                test_fraction=p.test_fraction, seed=p.data_seed, data_path=p.data_path,
            )
        return self._data

    @classmethod
    def check_config(cls, config: Any, params: LocalFlowMatchingParams) -> list[str]:
        """The run must train every block exactly once through, on IID shares of unlabelled data."""
        problems = []
        needed = params.num_blocks * params.rounds_per_block
        if config.num_server_rounds != needed:
            problems.append(
                f"key 'num-server-rounds': {config.num_server_rounds}, but the lfm chain needs "
                f"workload.lfm.num-blocks ({params.num_blocks}) x workload.lfm.rounds-per-block "
                f"({params.rounds_per_block}) = {needed} rounds (one block after another); "
                f"set num-server-rounds = {needed}"
            )
        if config.num_clients > 1 and config.partition.name != "iid":
            problems.append(
                f"key 'partition.name': '{config.partition.name}' splits by class label, but lfm's data is "
                "unlabelled; set partition.name = \"iid\" (or num-clients = 1)"
            )
        if params.dataset in TOY_DATASETS:
            train_rows = params.num_samples - int(round(params.test_fraction * params.num_samples))
            if train_rows < config.num_clients:
                problems.append(
                    f"key 'workload.lfm.num-samples': {params.num_samples} points leave {train_rows} training "
                    f"rows for num-clients = {config.num_clients}; every client needs at least one"
                )
        return problems

    def num_rounds(self) -> int:
        """Server rounds a full run needs: ``num-blocks * rounds-per-block``."""
        return self.params.num_blocks * self.params.rounds_per_block

    def block_for_round(self, server_round: int) -> int:
        """The block trained in ``server_round`` (rounds count from 1)."""
        if not 1 <= server_round <= self.num_rounds():
            raise ValueError(
                f"round {server_round} is outside the run: num-blocks = {self.params.num_blocks} x "
                f"rounds-per-block = {self.params.rounds_per_block} gives rounds 1..{self.num_rounds()}"
            )
        return (server_round - 1) // self.params.rounds_per_block

    def build_model(self) -> LocalFlowChain:
        p = self.params
        return LocalFlowChain(
            dim=self.data.dim,
            step_sizes=p.step_size_schedule(),
            free_final_block=p.free_final_block,
            hidden_width=p.hidden_width,
            hidden_layers=p.hidden_layers,
            ode_steps=p.ode_steps,
            distill_width=p.distill_width if p.distill else 0,
            distill_layers=p.distill_layers,
        )

    def client_dataset(self, partition_id: int, num_partitions: int) -> torch.Tensor:
        """Rows of this client's IID share of the standardised training set (all rows if one partition)."""
        return iid_partition(self.data.train, partition_id, num_partitions)

    def train(self, model: nn.Module, dataset: torch.Tensor, context: TrainContext) -> dict[str, float]:
        """Train the block scheduled for ``context.server_round`` (and its one-step map) in place."""
        chain = _as_chain(model)
        p = self.params
        block = self.block_for_round(context.server_round)
        if p.warm_start and block > 0 and (context.server_round - 1) % p.rounds_per_block == 0:
            warm_start(chain, block)
        epochs = max(1, context.local_epochs)
        started = time.perf_counter()
        with torch.no_grad():
            x_left = chain.push_forward(dataset, block)
        pushed = time.perf_counter()
        loss = train_velocity_block(
            chain, block, x_left, steps=p.steps_per_round * epochs, batch_size=context.batch_size,
            lr=context.lr, generator=context.generator, interpolant=p.interpolant,
        )
        fitted = time.perf_counter()
        metrics: dict[str, float] = {
            "train_loss": loss, "num-examples": len(dataset), "block": block,
            "push_seconds": pushed - started, "fit_seconds": fitted - pushed,
        }
        if chain.has_distilled_maps:
            with torch.no_grad():
                x_right = chain.transport(x_left, block)
            metrics["distill_loss"] = train_one_step_map(
                chain.one_step_maps[block], x_right, x_left, steps=p.distill_steps * epochs,
                batch_size=context.batch_size, lr=context.lr, generator=context.generator,
            )
            metrics["distill_seconds"] = time.perf_counter() - fitted
        return metrics

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Sample quality against held-out data (ODE sampler, and one-step maps when present)."""
        chain = _as_chain(model)
        chain.eval()
        p = self.params
        test = self.data.test
        generator = torch.Generator().manual_seed(p.eval_seed)
        noise = torch.randn((p.eval_samples, chain.dim), generator=generator)
        results: dict[str, Any] = {}
        variants = [("", False)] + ([("_distilled", True)] if chain.has_distilled_maps else [])
        with torch.no_grad():
            for suffix, distilled in variants:
                started = time.perf_counter()
                samples = chain.generate(noise, distilled=distilled)
                results[f"sample_seconds{suffix}"] = time.perf_counter() - started
                results.update({f"{name}{suffix}": value for name, value in sample_quality(samples, test, p.eval_seed).items()})
        if 0 < chain.dim <= p.nll_max_dim:
            with torch.no_grad():  # torch.func still computes the exact divergence inside
                results["nll"] = float(-chain.log_prob(test).mean())
        return results

    def headline_metric(self) -> tuple[str, str]:
        return "energy_distance", "min"


def sample_quality(samples: torch.Tensor, reference: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Energy distance, RBF-MMD^2 (median bandwidth) and sliced W2 of ``samples`` to ``reference``."""
    if not torch.isfinite(samples).all():
        return {"energy_distance": float("inf"), "mmd": float("inf"), "sliced_w": float("inf")}
    projections = torch.Generator().manual_seed(seed)
    return {
        "energy_distance": float(energy_distance(samples, reference)),
        "mmd": float(mmd_rbf(samples, reference)),
        "sliced_w": float(sliced_wasserstein(samples, reference, generator=projections)),
    }


def _as_chain(model: nn.Module) -> LocalFlowChain:
    if not isinstance(model, LocalFlowChain):
        raise TypeError(f"the lfm workload trains a LocalFlowChain, got {type(model).__name__}")
    return model
