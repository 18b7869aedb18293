"""How much of a benign client update is BatchNorm running statistics rather than learned weights.

Defences measure updates on the learned weights only (``flowerbed.platform.arrays.is_learned``):
the papers define their rules on model parameters. This measures why that matters for a
grid's federation: starting from a model (by default the bench's seed-0 pre-training), every
client trains one local round as a benign client would, and the L2 norm of its update is taken
over the learned weights and over every floating-point array (running statistics included).

    OMP_NUM_THREADS=1 python benchmarks/update_geometry.py --grid experiments/bench-dmba.toml \\
        --model bench-results/bench-dmba/pretraining/seed0.pt

Prints one line per client and a Markdown summary (medians and the statistics' share of the
squared update norm).
"""

from __future__ import annotations

import argparse
import statistics
import tomllib

import torch

from flowerbed.platform.arrays import is_learned
from flowerbed.platform.config import parse_run_config
from flowerbed.platform.seeding import generator
from flowerbed.platform.workload import TrainContext
from flowerbed.workloads.image_classification.workload import ImageClassification


def update_norms(workload: ImageClassification, state: dict[str, torch.Tensor], partition_id: int) -> tuple[float, float]:
    """(learned-weight norm, all-floating-point norm) of one benign client's update from ``state``."""
    config = workload.config
    model = workload.build_model()
    model.load_state_dict(state)
    context = TrainContext(
        server_round=1,
        partition_id=partition_id,
        num_partitions=config.num_clients,
        local_epochs=config.local_epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        generator=generator(config.seed, "benchmark", partition_id),
    )
    workload.train(model, workload.client_dataset(partition_id, config.num_clients), context)
    learned = everything = 0.0
    for key, value in model.state_dict().items():
        if not torch.is_floating_point(value):
            continue
        squared = float((value.double() - state[key].double()).square().sum())
        everything += squared
        if is_learned(key, value.numpy().dtype):
            learned += squared
    return learned**0.5, everything**0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="experiments/bench-dmba.toml", help="grid file whose [base] federation to use")
    parser.add_argument("--model", default="", help="model.pt/checkpoint to start from (default: a fresh model)")
    args = parser.parse_args()
    with open(args.grid, "rb") as handle:
        workload = ImageClassification(parse_run_config(tomllib.load(handle)["base"]))
    if args.model:
        loaded = torch.load(args.model, weights_only=True)
        state = loaded.get("model", loaded)
    else:
        torch.manual_seed(workload.config.seed)
        state = workload.build_model().state_dict()
    learned, everything = [], []
    for partition_id in range(workload.config.num_clients):
        norm_learned, norm_all = update_norms(workload, state, partition_id)
        learned.append(norm_learned)
        everything.append(norm_all)
        print(f"client {partition_id:2d}: learned weights {norm_learned:.3f}, all floating-point arrays {norm_all:.3f}")
    share = 1 - sum(x * x for x in learned) / sum(x * x for x in everything)
    print()
    print("| clients | median norm, learned weights | median norm, with running statistics | statistics' share of the squared norm |")
    print("|---:|---:|---:|---:|")
    print(f"| {len(learned)} | {statistics.median(learned):.3f} | {statistics.median(everything):.3f} | {share:.0%} |")


if __name__ == "__main__":
    main()
