"""Overhead of flowerbed's simulation over a plain sequential PyTorch loop.

The same federated training is run two ways, back to back:

(a) **plain** — one Python process, no Flower, no Ray: for every round, each of
    the 10 clients in turn loads the global weights and trains one local epoch
    of SGD on its partition; the server takes the example-weighted mean of the
    10 models (FedAvg, McMahan et al., AISTATS 2017) and evaluates it on the
    test set. Data, partitions, model, initial weights, optimiser,
    hyper-parameters, batch order and evaluation are flowerbed's: the dataset
    comes from ``load_dataset``, the partitions from ``partition_indices``
    (over the images the server does not keep), and the initial model and every
    client's shuffling generator are derived from the run seed as flowerbed
    derives them, so (a) with 1 thread and (b) reach the same accuracy (the
    last column checks it). Measured with torch's default intra-op threads
    (one per core) and with 1 thread.
(b) **flowerbed** — ``flowerbed.platform.simulation.run_experiment`` with
    ``num-clients=10``, ``fraction-train=1.0``: Flower's simulation engine
    starts Ray with one actor per core (each client trains with 1 torch
    thread), the ServerApp (torch's default threads) aggregates with FedAvg,
    evaluates, writes metrics.jsonl and a checkpoint every round, and the plots
    at the end. ``--ray-default-niceness`` adds a run with Ray's own worker
    niceness (15) instead of flowerbed's (0).

Each measurement runs in a fresh subprocess (no shared caches, thread settings
or OMP_NUM_THREADS). Seconds are split into start-up (before round 1: for (b)
Ray, the actors, node discovery), round 1 (for (b) it includes each actor's
first imports and its dataset and partition), the mean of rounds 2..N (the
steady state) and the end (for (b) plots, the final model, Ray shutdown).
Round times of (b) come from timers wrapped around ``RoundSampler.sample`` (a
round's first step) and ``Progress.round`` (its last). CPU seconds are those
of the measured process and all its descendants (for (b) the ServerApp, every
Ray daemon and actor), read from /proc; on a shared machine they vary far less
than wall time. The load average before each measurement is reported;
``--busy-loops N`` adds N busy loops at nice 10 as a controlled competing load.

    python benchmarks/overhead.py --rounds 5 --train-size 5000 --repeats 2
    python benchmarks/overhead.py --rounds 3 --train-size 1000 --test-size 200 --busy-loops 2 --ray-default-niceness
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

DEFAULT_ROUNDS = 5
DEFAULT_TRAIN_SIZE = 5000
NUM_CLIENTS = 10
RAY_DEFAULT_WORKER_NICENESS = 15  # what Ray gives its workers unless told otherwise


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds (user + system, with reaped children) of a process and all its live descendants.

    For (b) this counts the ServerApp, every Ray daemon and every client actor.
    """
    root = os.getpid() if root is None else root
    ticks = os.sysconf("SC_CLK_TCK")
    parent_of: dict[int, int] = {}
    cpu_of: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        # Fields after the command name, from 0: state, ppid, ..., utime (11), stime, cutime, cstime (14).
        parent_of[int(entry)] = int(fields[1])
        cpu_of[int(entry)] = sum(int(value) for value in fields[11:15]) / ticks
    children: dict[int, list[int]] = {}
    for pid, parent in parent_of.items():
        children.setdefault(parent, []).append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += cpu_of.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


def run_config(args: argparse.Namespace, output_dir: str) -> dict[str, Any]:
    """The flat run config both sides train (flowerbed's defaults otherwise)."""
    return {
        "experiment": "overhead",
        "num-server-rounds": args.rounds,
        "num-clients": NUM_CLIENTS,
        "fraction-train": 1.0,
        "local-epochs": 1,
        "data.train-size": args.train_size,
        "data.test-size": args.test_size,
        "data.cache-dir": args.cache_dir,
        "output-dir": output_dir,
    }


# --------------------------------------------------------------------------- (a) plain loop
def measure_plain(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from flowerbed.platform.config import parse_run_config
    from flowerbed.platform.partitioning import partition_indices
    from flowerbed.platform.registry import MODELS
    from flowerbed.platform.seeding import generator, seed_torch
    from flowerbed.workloads.image_classification.data import load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    began = time.perf_counter()
    cpu = [tree_cpu_seconds()]
    config = parse_run_config(run_config(args, output_dir=tempfile.gettempdir()))
    data = load_dataset(config.data)
    # As ImageClassification: the last ``data.server-size`` training images stay on the server.
    client_pool = len(data.train_labels) - getattr(config.data, "server_size", 0)
    parts = partition_indices(data.train_labels[:client_pool], NUM_CLIENTS, config.partition, config.seed)
    clients = [(data.train_images[torch.from_numpy(p)], data.train_labels[torch.from_numpy(p)]) for p in parts]
    architecture = MODELS.get(config.model.name)
    seed_torch(config.seed, "initial-model")
    # As ImageClassification.build_model: convolution weights channels-last.
    global_model = architecture(data.image_shape, data.num_classes).to(memory_format=torch.channels_last)
    local_model = architecture(data.image_shape, data.num_classes).to(memory_format=torch.channels_last)
    startup = time.perf_counter() - began
    cpu.append(tree_cpu_seconds())

    def to_float(images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0)

    rounds: list[float] = []
    accuracy = 0.0
    for server_round in range(1, config.num_server_rounds + 1):
        round_began = time.perf_counter()
        global_state = {k: v.clone() for k, v in global_model.state_dict().items()}
        total = {k: torch.zeros_like(v, dtype=torch.float64 if not v.is_floating_point() else v.dtype) for k, v in global_state.items()}
        examples = sum(len(labels) for _, labels in clients)
        for partition_id, (images, labels) in enumerate(clients):
            local_model.load_state_dict(global_state)
            local_model.train()
            optimizer = torch.optim.SGD(
                local_model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
            shuffle = generator(config.seed, "client", server_round, partition_id)
            for _ in range(config.local_epochs):
                order = torch.randperm(len(labels), generator=shuffle)
                for start in range(0, len(order), config.batch_size):
                    batch = order[start : start + config.batch_size]
                    optimizer.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(local_model(to_float(images[batch])), labels[batch])
                    loss.backward()
                    optimizer.step()
            weight = len(labels) / examples
            for key, value in local_model.state_dict().items():
                # As flowerbed's client: integer buffers (BatchNorm's counters) go back unchanged.
                value = value if value.is_floating_point() else global_state[key]
                total[key] += value.to(total[key].dtype) * weight
        global_model.load_state_dict(total)  # casts integer buffers back
        global_model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(data.test_labels), 500):
                logits = global_model(to_float(data.test_images[start : start + 500]))
                F.cross_entropy(logits, data.test_labels[start : start + 500], reduction="sum").item()
                correct += (logits.argmax(1) == data.test_labels[start : start + 500]).sum().item()
        accuracy = correct / len(data.test_labels)
        rounds.append(time.perf_counter() - round_began)
        cpu.append(tree_cpu_seconds())
    return {
        "side": f"plain, {threads} thread{'s' if threads > 1 else ''}",
        "threads": f"{threads} torch thread(s), 1 process",
        "startup": startup,
        "rounds": rounds,
        "end": 0.0,
        "final_acc": accuracy,
        "cpu_startup": cpu[1] - cpu[0],
        "cpu_rounds": [after - before for before, after in pairwise(cpu[1:])],
    }


# --------------------------------------------------------------------------- (b) flowerbed
def measure_flowerbed(args: argparse.Namespace) -> dict[str, Any]:
    from flowerbed.platform import federation, progress
    from flowerbed.platform.recorder import read_metrics
    from flowerbed.platform.simulation import run_experiment

    starts: list[float] = []
    ends: list[float] = []
    sample = federation.RoundSampler.sample
    report_round = progress.Progress.round

    cpu: list[float] = []

    def timed_sample(self, server_round):
        starts.append(time.perf_counter())
        if not cpu:
            cpu.append(tree_cpu_seconds())
        return sample(self, server_round)

    def timed_round(self, record, total):
        ends.append(time.perf_counter())
        cpu.append(tree_cpu_seconds())
        return report_round(self, record, total)

    federation.RoundSampler.sample = timed_sample
    progress.Progress.round = timed_round
    with tempfile.TemporaryDirectory(dir=args.scratch) as output_dir:
        began = time.perf_counter()
        cpu_began = tree_cpu_seconds()
        outcome = run_experiment(run_config(args, output_dir), quiet=True)
        finished = time.perf_counter()
        metrics = read_metrics(outcome.run_dir)
    import torch

    from flowerbed.platform.simulation import WORKER_NICENESS

    niceness = os.environ.get("RAY_worker_niceness")
    return {
        "side": "flowerbed simulation" + (f", Ray workers at nice {niceness}" if niceness else ""),
        "threads": f"Ray: {os.cpu_count()} actors x 1 torch thread (nice {niceness or WORKER_NICENESS}); "
        f"ServerApp {torch.get_num_threads()} threads",
        "startup": starts[0] - began,
        "rounds": [end - start for start, end in zip(starts, ends)],
        "end": finished - ends[-1],
        "final_acc": metrics[-1]["clean_acc"],
        "recorded_seconds": [m["seconds"] for m in metrics],
        "cpu_startup": cpu[0] - cpu_began,
        "cpu_rounds": [after - before for before, after in pairwise(cpu)],
    }


# --------------------------------------------------------------------------- driver
BUSY_LOOP = "import os, time\nos.nice(10)\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def measure_in_subprocess(args: argparse.Namespace, side: str, threads: int, env_extra: dict[str, str]) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--side", side, "--threads", str(threads),
        "--rounds", str(args.rounds), "--train-size", str(args.train_size), "--test-size", str(args.test_size),
        "--cache-dir", args.cache_dir, "--scratch", args.scratch,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAY_worker_niceness")}
    env.update(env_extra)
    # Optional competing load: busy loops at nice 10 (each stops with this measurement, or after an hour).
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.busy_loops)]
    try:
        load = os.getloadavg()
        began = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - began
    finally:
        for process in busy:
            process.terminate()
            process.wait()
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"{side} measurement failed (exit {result.returncode})")
    line = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")][-1]
    measured = json.loads(line[len("RESULT "):])
    measured.update({"load": load, "process_wall": wall})
    return measured


def steady(rounds: list[float]) -> float:
    later = rounds[1:] or rounds
    return sum(later) / len(later)


def measurement_table(results: list[dict[str, Any]]) -> str:
    header = (
        "| repeat | side | CPU threads | load avg 1/5 min | start-up s | round 1 s | rounds 2..N s/round "
        "| end s | total s | CPU s start-up | CPU s/round, rounds 2..N | final clean acc |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['repeat']} | {r['side']} | {r['threads']} | {r['load'][0]:.1f} / {r['load'][1]:.1f} "
            f"| {r['startup']:.1f} | {r['rounds'][0]:.1f} | {steady(r['rounds']):.2f} | {r['end']:.1f} "
            f"| {r['process_wall']:.1f} | {r['cpu_startup']:.1f} | {steady(r['cpu_rounds']):.2f} | {r['final_acc']:.4f} |"
        )
    return "\n".join(lines)


def ratio_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| repeat | (b) | (a) | s/round, rounds 2..N | CPU s/round, rounds 2..N | total s (whole process) |",
        "|---|---|---|---|---|---|",
    ]
    for repeat in sorted({r["repeat"] for r in results}):
        batch = [r for r in results if r["repeat"] == repeat]
        for simulated in (r for r in batch if r["side"].startswith("flowerbed")):
            for plain in (r for r in batch if r["side"].startswith("plain")):
                lines.append(
                    f"| {repeat} | {simulated['side']} | {plain['side']} "
                    f"| {steady(simulated['rounds']) / steady(plain['rounds']):.2f} "
                    f"| {steady(simulated['cpu_rounds']) / steady(plain['cpu_rounds']):.2f} "
                    f"| {simulated['process_wall'] / plain['process_wall']:.2f} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--train-size", type=int, default=DEFAULT_TRAIN_SIZE)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "flowerbed"))
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="where (b)'s temporary run folders go")
    parser.add_argument("--busy-loops", type=int, default=0, help="competing load: busy loops at nice 10 during every measurement")
    parser.add_argument(
        "--ray-default-niceness", action="store_true",
        help=f"also measure (b) with Ray's own worker niceness ({RAY_DEFAULT_WORKER_NICENESS}) instead of flowerbed's",
    )
    parser.add_argument("--side", choices=("plain", "flowerbed"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 is reported apart from the steady state)")

    if args.side:
        measured = measure_plain(args) if args.side == "plain" else measure_flowerbed(args)
        print("RESULT " + json.dumps(measured), flush=True)
        return

    # Build the dataset once, so no measurement pays for it.
    from flowerbed.platform.config import parse_run_config
    from flowerbed.workloads.image_classification.data import load_dataset

    load_dataset(parse_run_config(run_config(args, output_dir=args.scratch)).data)

    measurements: list[tuple[str, int, dict[str, str]]] = [("plain", 0, {}), ("plain", 1, {}), ("flowerbed", 0, {})]
    if args.ray_default_niceness:
        measurements.append(("flowerbed", 0, {"RAY_worker_niceness": str(RAY_DEFAULT_WORKER_NICENESS)}))
    results = []
    first_load = os.getloadavg()
    for repeat in range(1, args.repeats + 1):
        batch = []
        for side, threads, env_extra in measurements:
            measured = measure_in_subprocess(args, side, threads, env_extra)
            measured["repeat"] = repeat
            batch.append(measured)
            print(f"# {measured['side']}: {json.dumps({k: v for k, v in measured.items() if k != 'side'})}", file=sys.stderr)
        results += batch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    print(f"machine: {os.cpu_count()} cores, {cpu}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"config: {NUM_CLIENTS} clients x 1 local epoch x {args.rounds} rounds, train-size {args.train_size}, "
          f"test-size {args.test_size}; competing busy loops at nice 10: {args.busy_loops}")
    print(f"load average before the first measurement: {' '.join(f'{x:.2f}' for x in first_load)}; after the last: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(measurement_table(results))
    print("\nRatios (b) flowerbed / (a) plain, same repeat:\n")
    print(ratio_table(results))


if __name__ == "__main__":
    main()
