"""GMF benchmark: concatenation vs GMF+concat vs attention fusion vs GMF+attention.

Checks, at CPU scale, the qualitative claims of Xiong et al. (arXiv:2410.15475):
GMF with a plain concatenation backend comes close to a heavier fusion model
with fewer parameters and FLOPs, and GMF in front of the heavier model improves
it. Every arm is trained locally (one client, the workload's own ``train``) on
each dataset for several seeds (the seed drives the data draw and split, the
initialisation and the batch order), then evaluated with all modalities and
with each modality missing. Prints one markdown table per dataset.

    OMP_NUM_THREADS=1 python benchmarks/gmf.py                 # 3 seeds, synthetic + digits
    OMP_NUM_THREADS=1 python benchmarks/gmf.py --ablations     # + GMF loss ablations
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch

from flowerbed.extensions.gmf import GMFParams, GMFWorkload
from flowerbed.platform.workload import TrainContext

ARMS: dict[str, dict[str, object]] = {
    "concat": {"fusion": "concat"},
    "GMF + concat": {"fusion": "gmf"},
    "attention": {"fusion": "attention"},
    "GMF + attention": {"fusion": "gmf+attention"},
}
ABLATIONS: dict[str, dict[str, object]] = {
    "GMF + concat, no reconstruction": {"fusion": "gmf", "reconstruction-weight": 0.0},
    "GMF + concat, + concentration + decorrelation": {
        "fusion": "gmf", "concentration-weight": 1.0, "decorrelation-weight": 1.0,
    },
    "concat, modality dropout 0.2": {"fusion": "concat", "modality-dropout": 0.2},
    "GMF + concat, modality dropout 0.2": {"fusion": "gmf", "modality-dropout": 0.2},
}


def run_arm(dataset: str, overrides: dict[str, object], seed: int, epochs: int, lr: float, batch_size: int) -> dict:
    """Train one arm locally for ``epochs`` and return its evaluation metrics."""
    workload = GMFWorkload(None, GMFParams(**{"dataset": dataset, "data-seed": seed, **overrides}))
    torch.manual_seed(seed)
    model = workload.build_model()
    context = TrainContext(
        server_round=1, partition_id=0, num_partitions=1, local_epochs=epochs, lr=lr,
        batch_size=batch_size, generator=torch.Generator().manual_seed(seed),
    )
    start = time.perf_counter()
    workload.train(model, workload.client_dataset(0, 1), context)
    metrics = workload.evaluate(model)
    metrics["seconds"] = time.perf_counter() - start
    metrics["modalities"] = workload.test_data.modalities
    return metrics


def _mean_std(values: Sequence[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def markdown_table(dataset: str, results: dict[str, list[dict]]) -> str:
    modalities = next(iter(results.values()))[0]["modalities"]
    header = ["fusion", "acc (all)"] + [f"acc, no {m}" for m in modalities] + ["params", "FLOPs/example", "s/run"]
    lines = [f"**{dataset}** (accuracy % mean ± std over seeds)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, runs in results.items():
        cells = [arm, _mean_std([r["acc"] for r in runs])]
        cells += [_mean_std([r[f"acc_missing_{m}"] for r in runs]) for m in modalities]
        cells += [f"{runs[0]['params']:,}", f"{runs[0]['flops']:,}", f"{statistics.mean(r['seconds'] for r in runs):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="synthetic,digits", help="comma-separated: synthetic, digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ablations", action="store_true", help="also run the GMF loss / modality-dropout ablations")
    args = parser.parse_args()
    arms = {**ARMS, **(ABLATIONS if args.ablations else {})}
    began = time.perf_counter()
    for dataset in args.datasets.split(","):
        results = {
            arm: [run_arm(dataset, overrides, seed, args.epochs, args.lr, args.batch_size) for seed in range(args.seeds)]
            for arm, overrides in arms.items()
        }
        print(markdown_table(dataset, results), end="\n\n", flush=True)
    print(f"{args.seeds} seeds, {args.epochs} epochs, Adam lr {args.lr}, batch {args.batch_size}; "
          f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
