"""How flowerbed's Ray simulation scales with the number of virtual clients.

Four arms, 3 rounds each, the default cnn on digits-rgb32 with 20 training images
per client (IID, so every sampled client does the same work), one Ray actor per
core, each arm in a fresh process:

    100 clients, 10% sampled (10 per round)        1,000 clients, 10% (100 per round)
    10,000 clients, 1% (100 per round)             10,000 clients, 10% (1,000 per round)

Measured per arm: the seconds before round 1 (Ray, node registration, flowerbed's
node discovery, which asks every node for its partition), the seconds of node
discovery alone, round 1 (each actor's first dataset/partition load), the steady
rounds 2..3, and the peak memory of the whole process tree (ServerApp, Ray's
daemons, every actor) as the sum of PSS (proportional set size: shared pages
counted once, split among the processes sharing them), sampled every second
from /proc. Before the runs, the dataset and the partitions of each size are built
once (timed: the partitioning column is what a first run pays; later runs read
them from the cache).

The exponents compare arms that differ in one thing: rounds' seconds against the
clients sampled at a fixed 10,000 clients (1% vs 10%), and against the clients that
exist at a fixed 100 sampled (1,000 vs 10,000).

    python benchmarks/scale.py                      # all four arms (about 25 min here)
    python benchmarks/scale.py --arms 100:0.1 1000:0.1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

IMAGES_PER_CLIENT = 20
ROUNDS = 3
DEFAULT_ARMS = ("100:0.1", "1000:0.1", "10000:0.01", "10000:0.1")


def run_config(clients: int, fraction: float, cache_dir: str, output_dir: str) -> dict[str, Any]:
    return {
        "experiment": f"scale-{clients}",
        "num-clients": clients,
        "fraction-train": fraction,
        "min-clients": 1,
        "num-server-rounds": ROUNDS,
        "data.train-size": IMAGES_PER_CLIENT * clients + 100,  # + data.server-size
        "data.test-size": 1000,
        "data.cache-dir": cache_dir,
        "partition.name": "iid",
        "output-dir": output_dir,
    }


def tree_memory(root: int) -> tuple[int, int]:
    """(sum of PSS, sum of RSS) in bytes over ``root`` and all its live descendants."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent_of[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    children: dict[int, list[int]] = {}
    for pid, parent in parent_of.items():
        children.setdefault(parent, []).append(pid)
    pss = rss = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return pss, rss


# --------------------------------------------------------------------------- one arm (child process)
def measure_arm(clients: int, fraction: float, cache_dir: str, scratch: str) -> dict[str, Any]:
    from flowerbed.platform import federation, progress
    from flowerbed.platform.recorder import read_metrics
    from flowerbed.platform.simulation import run_experiment

    starts: list[float] = []
    ends: list[float] = []
    discovery: list[float] = []
    sample, report_round, discover = federation.RoundSampler.sample, progress.Progress.round, federation.discover_partitions

    def timed_sample(self, server_round):
        starts.append(time.perf_counter())
        return sample(self, server_round)

    def timed_round(self, record, total):
        ends.append(time.perf_counter())
        return report_round(self, record, total)

    def timed_discovery(grid, config):
        began = time.perf_counter()
        try:
            return discover(grid, config)
        finally:
            discovery.append(time.perf_counter() - began)

    federation.RoundSampler.sample, progress.Progress.round = timed_sample, timed_round
    federation.discover_partitions = timed_discovery
    with tempfile.TemporaryDirectory(dir=scratch) as output_dir:
        began = time.perf_counter()
        outcome = run_experiment(run_config(clients, fraction, cache_dir, output_dir), quiet=True)
        finished = time.perf_counter()
        metrics = read_metrics(outcome.run_dir)
    return {
        "startup": starts[0] - began,
        "discovery": discovery[0],
        "rounds": [end - start for start, end in zip(starts, ends)],
        "end": finished - ends[-1],
        "sampled": [len(m["clients"]) for m in metrics],
        "failures": sum(len(m["failures"]) for m in metrics),
    }


def prepare(clients: int, cache_dir: str) -> float:
    """Build the dataset and the partitions of ``clients`` once; return the partitioning seconds."""
    from flowerbed.platform.config import parse_run_config
    from flowerbed.platform.partitioning import partition_indices
    from flowerbed.workloads.image_classification.data import load_dataset

    config = parse_run_config(run_config(clients, 0.1, cache_dir, tempfile.gettempdir()))
    labels = load_dataset(config.data).train_labels[: -config.data.server_size]
    began = time.perf_counter()
    partition_indices(labels, clients, config.partition, config.seed)  # computed, not read back
    seconds = time.perf_counter() - began
    partition_indices(labels, clients, config.partition, config.seed, cache_dir)  # and cached for the run
    return seconds


# --------------------------------------------------------------------------- driver
def run_arm(clients: int, fraction: float, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", f"{clients}:{fraction}", "--cache-dir", args.cache_dir, "--scratch", args.scratch]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"pss": 0, "rss": 0}

    def sample_memory() -> None:
        while child.poll() is None:
            pss, rss = tree_memory(child.pid)
            peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)
            time.sleep(1.0)

    sampler = threading.Thread(target=sample_memory, daemon=True)
    began = time.perf_counter()
    sampler.start()
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - began
    sampler.join()
    if child.returncode != 0:
        sys.stderr.write(stdout[-3000:] + stderr[-3000:])
        raise SystemExit(f"arm {clients}:{fraction} failed (exit {child.returncode})")
    result = json.loads([line for line in stdout.splitlines() if line.startswith("RESULT ")][-1][len("RESULT ") :])
    result.update(clients=clients, fraction=fraction, wall=wall, peak_pss=peak["pss"], peak_rss=peak["rss"])
    return result


def steady(rounds: list[float]) -> float:
    later = rounds[1:] or rounds
    return sum(later) / len(later)


def exponent(small: dict[str, Any], large: dict[str, Any], key: str) -> float:
    return math.log(steady(large["rounds"]) / steady(small["rounds"])) / math.log(large[key] / small[key])


def report(results: list[dict[str, Any]], partition_seconds: dict[int, float]) -> str:
    lines = [
        "| clients | sampled/round | partitioning s (first run only) | start-up s | of which node discovery s "
        "| round 1 s | rounds 2..3 s/round | peak PSS GiB (RSS sum) | total s | failures |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        r["per_round"] = r["sampled"][-1]
        lines.append(
            f"| {r['clients']:,} | {r['per_round']:,} | {partition_seconds[r['clients']]:.1f} | {r['startup']:.1f} "
            f"| {r['discovery']:.1f} | {r['rounds'][0]:.1f} | {steady(r['rounds']):.2f} "
            f"| {r['peak_pss'] / 2**30:.2f} ({r['peak_rss'] / 2**30:.2f}) | {r['wall']:.0f} | {r['failures']} |"
        )
    by_arm = {(r["clients"], r["per_round"]): r for r in results}
    notes = []
    if (10000, 100) in by_arm and (10000, 1000) in by_arm:
        notes.append(
            f"rounds 2..3 grow as sampled^{exponent(by_arm[(10000, 100)], by_arm[(10000, 1000)], 'per_round'):.2f}"
            " at 10,000 clients (100 -> 1,000 sampled)"
        )
    if (1000, 100) in by_arm and (10000, 100) in by_arm:
        notes.append(
            f"and as clients^{exponent(by_arm[(1000, 100)], by_arm[(10000, 100)], 'clients'):.2f}"
            " at 100 sampled (1,000 -> 10,000 clients)"
        )
    return "\n".join(lines) + ("\n\n" + "; ".join(notes) + "." if notes else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), help="clients:fraction-train pairs")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "flowerbed"))
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="where the temporary run folders go")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        clients, fraction = args.child.split(":")
        print("RESULT " + json.dumps(measure_arm(int(clients), float(fraction), args.cache_dir, args.scratch)))
        return
    arms = [(int(c), float(f)) for c, f in (arm.split(":") for arm in args.arms)]
    partition_seconds = {clients: prepare(clients, args.cache_dir) for clients in sorted({c for c, _ in arms})}
    results = []
    for clients, fraction in arms:
        results.append(run_arm(clients, fraction, args))
        print(f"{clients} clients, {fraction:g} sampled: {results[-1]['wall']:.0f} s", file=sys.stderr, flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    print(f"{time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores ({cpu}), python {platform.python_version()}")
    print("command: python benchmarks/scale.py " + " ".join(sys.argv[1:]) + "\n")
    print(report(results, partition_seconds))


if __name__ == "__main__":
    main()
