"""MGCM benchmark: quality/latency of the three conflict mitigations, and their measured memory.

Reproduces, at CPU scale on the synthetic SimulST corpus, the two claims of
Liu et al. (arXiv:2409.15911): (1) module-level mitigation (MGCM) gives better
simultaneous translation than model-level projection or no mitigation, and (2)
it needs far less extra memory (>95% less in the paper) than model-level methods.

Quality: for each seed and mitigation, train the MGCM workload in local mode
(one client, ``--rounds`` rounds of one epoch, Adam) and score greedy wait-k
decoding on the held-out set (SacreBLEU, Average Lagging in frames).
Memory: peak extra CPU-allocator bytes of one mitigation step on real
per-task gradients, measured with torch.profiler (``measure_peak_allocation``),
for the benchmark model and a larger one.

    OMP_NUM_THREADS=1 python benchmarks/mgcm.py            # ~6 min on one core
    python benchmarks/mgcm.py --seeds 0 --rounds 2         # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flowerbed.extensions.mgcm import MGCMParams, MGCMWorkload, ModulePartition, measure_peak_allocation
from flowerbed.extensions.mgcm.surgery import GradientSurgery, combine, project_model_level, project_module_level
from flowerbed.extensions.mgcm.tasks import task_losses
from flowerbed.platform.workload import TrainContext

MITIGATIONS = ("none", "model-level", "mgcm")


def train_and_score(mitigation: str, seed: int, rounds: int, lr: float, batch_size: int, extra: dict) -> dict[str, float]:
    workload = MGCMWorkload(None, MGCMParams(mitigation=mitigation, **extra))
    torch.manual_seed(seed)
    model = workload.build_model()
    dataset = workload.client_dataset(0, 1)
    started, stats = time.perf_counter(), []
    for round_ in range(1, rounds + 1):
        context = TrainContext(
            server_round=round_, partition_id=0, num_partitions=1, local_epochs=1, lr=lr,
            batch_size=batch_size, generator=torch.Generator().manual_seed(seed * 7919 + round_),
        )
        stats.append(workload.train(model, dataset, context))
    train_seconds = time.perf_counter() - started
    metrics = workload.evaluate(model)
    metrics["train_seconds"] = train_seconds
    for key in ("conflict_rate", "model_conflict_rate", "masked_conflict_rate"):
        metrics[key] = statistics.fmean(s[key] for s in stats)
    return metrics


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def quality_table(results: dict[str, list[dict]], ks: tuple[int, ...]) -> str:
    header = ["mitigation"] + [f"BLEU k={k}" for k in ks] + ["BLEU offline"] + [f"AL k={k}" for k in ks]
    header += ["module conflicts", "model conflicts", "masked", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mitigation, runs in results.items():
        col = lambda key: [r[key] for r in runs]  # noqa: E731
        row = [mitigation]
        row += [mean_std(col(f"bleu_k{k}")) for k in ks] + [mean_std(col("bleu_offline"))]
        row += [f"{statistics.fmean(col(f'al_k{k}')):.2f}" for k in ks]
        row += [f"{statistics.fmean(col(key)):.1%}" for key in ("conflict_rate", "model_conflict_rate", "masked_conflict_rate")]
        row += [f"{statistics.fmean(col('train_seconds')):.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def memory_rows(label: str, extra: dict, batch_size: int) -> list[str]:
    """Peak extra bytes of one mitigation step on the gradients of a real training batch."""
    workload = MGCMWorkload(None, MGCMParams(**extra))
    torch.manual_seed(0)
    model = workload.build_model()
    partition = ModulePartition.from_model(model)
    batch = workload.train_corpus.subset(torch.arange(batch_size))
    losses = task_losses(model, batch, workload.params.wait_k, workload.params.chunk_frames)
    primary, auxiliaries = GradientSurgery(partition, "none", (1.0, 1.0)).task_gradients(losses["st"], [losses["asr"], losses["mt"]])
    out = [torch.zeros_like(p) for p in partition.parameters]
    param_bytes = sum(p.numel() * p.element_size() for p in partition.parameters)
    largest_module = int(partition.group_sizes().max()) * 4
    variants = {
        "none": lambda aux: combine(primary, aux, (1.0, 1.0), out),
        "model-level (flattened, PCGrad-style)": lambda aux: (project_model_level(primary, aux, flatten=True), combine(primary, aux, (1.0, 1.0), out)),
        "model-level (streamed, no flattening)": lambda aux: (project_model_level(primary, aux, flatten=False), combine(primary, aux, (1.0, 1.0), out)),
        "mgcm (module-level)": lambda aux: (project_module_level(primary, aux, partition), combine(primary, aux, (1.0, 1.0), out)),
    }
    peaks = {}
    for name, step in variants.items():
        aux = [[g.clone() for g in task] for task in auxiliaries]
        peaks[name] = measure_peak_allocation(lambda: step(aux))[1]
    reference = peaks["model-level (flattened, PCGrad-style)"]
    rows = []
    for name, peak in peaks.items():
        saving = f"{1 - peak / reference:.1%}" if reference else "-"
        rows.append(
            f"| {label} | {param_bytes / 1e6:.2f} MB | {largest_module / 1e3:.1f} kB | {name} | {peak:,} B | {peak / param_bytes:.3f} | {saving} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated model-init / data-order seeds")
    parser.add_argument("--rounds", type=int, default=4, help="local-mode rounds (one epoch each)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=1500)
    parser.add_argument("--eval-wait-ks", default="1,3,5")
    parser.add_argument("--asr-weight", type=float, default=1.0, help="weight of the auxiliary ASR loss")
    parser.add_argument("--mt-weight", type=float, default=1.0, help="weight of the auxiliary MT loss")
    parser.add_argument("--skip-memory", action="store_true", help="only the quality table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = {
        "train-size": args.train_size, "eval-wait-ks": args.eval_wait_ks,
        "asr-weight": args.asr_weight, "mt-weight": args.mt_weight,
    }
    ks = tuple(int(k) for k in args.eval_wait_ks.split(","))

    started = time.perf_counter()
    if not args.skip_memory:
        print_memory_table(extra, args.batch_size)
    results: dict[str, list[dict]] = {m: [] for m in MITIGATIONS}
    for seed in seeds:
        for mitigation in MITIGATIONS:
            results[mitigation].append(train_and_score(mitigation, seed, args.rounds, args.lr, args.batch_size, extra))
    print(f"\n## Quality and latency (synthetic SimulST, {len(seeds)} seeds, {args.rounds} rounds x "
          f"{args.train_size} triples, wait-3 training, asr-weight {args.asr_weight}, mt-weight {args.mt_weight}, "
          "greedy; AL in frames)\n")
    print(quality_table(results, ks))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def print_memory_table(extra: dict, batch_size: int) -> None:
    print("## Peak extra memory of one mitigation step (measured, torch.profiler CPU allocator)\n")
    print("| model | parameters (fp32) | largest module | mitigation | peak extra | / parameter bytes | saving vs flattened model-level |")
    print("|---|---|---|---|---|---|---|")
    for label, sizes in (
        ("d=64, 2+2 layers (benchmark)", {}),
        ("d=256, 6+3 layers", {"d-model": 256, "ffn-dim": 1024, "encoder-layers": 6, "decoder-layers": 3}),
    ):
        for row in memory_rows(label, {**extra, **sizes}, batch_size):
            print(row, flush=True)


if __name__ == "__main__":
    main()
