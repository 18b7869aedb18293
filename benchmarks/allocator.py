"""What flowerbed's malloc settings (``flowerbed/platform/allocator.py``) save.

Each repetition runs in a fresh Python process, once with malloc's defaults
(``FLOWERBED_KEEP_FREED_MEMORY=0``) and once with flowerbed's settings, on one
torch thread (as every simulated client trains), the ``cnn`` in channels-last:

- ``train``: one local epoch of SGD (momentum 0.9, batch 32) over ``--images``
  random 3×32×32 images, as a client does each round;
- ``eval``: a forward pass in batches of 500 over ``--eval-images`` images, as the
  server's clean-accuracy and three ASR evaluations do each round.

Reported per side: CPU seconds of each phase (user + system, the minimum over
``--repeats``), the system (kernel) share of the whole process and its minor
page faults (median), peak resident memory (median).

With ``--simulation ROUNDS`` it also runs the bench-dmba federation without an
attacker (``experiments/bench-dmba.toml``'s ``[base]``: 20 clients, 10 a round,
``cnn``) for ROUNDS rounds through the Flower simulation, each side in a fresh
process, and reports the median wall seconds of a round (round 1 left out).

    OMP_NUM_THREADS=1 python benchmarks/allocator.py
    OMP_NUM_THREADS=1 python benchmarks/allocator.py --repeats 2 --simulation 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

CHILD_FLAG = "--child"
SIMULATION_CHILD_FLAG = "--simulation-child"
GRID = Path(__file__).resolve().parents[1] / "experiments" / "bench-dmba.toml"


def child(images: int, eval_images: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from flowerbed.platform.allocator import keep_freed_memory
    from flowerbed.platform.registry import MODELS

    torch.set_num_threads(1)
    applied = keep_freed_memory()
    torch.manual_seed(0)
    model = MODELS.get("cnn")((3, 32, 32), 10).to(memory_format=torch.channels_last)
    train_x, train_y = torch.rand(images, 3, 32, 32), torch.randint(0, 10, (images,))
    eval_x = torch.rand(eval_images, 3, 32, 32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    began = time.process_time()
    model.train()
    for start in range(0, images, 32):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(train_x[start : start + 32]), train_y[start : start + 32]).backward()
        optimizer.step()
    train_seconds = time.process_time() - began

    began = time.process_time()
    model.eval()
    with torch.no_grad():
        for start in range(0, eval_images, 500):
            model(eval_x[start : start + 500])
    eval_seconds = time.process_time() - began

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "applied": applied,
        "train": train_seconds,
        "eval": eval_seconds,
        "system_share": usage.ru_stime / (usage.ru_utime + usage.ru_stime),
        "minor_faults": usage.ru_minflt,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def simulation_child(rounds: int, output_dir: str) -> list[float]:
    """Seconds of each round of the bench-dmba federation without an attacker."""
    from flowerbed.platform.recorder import read_metrics
    from flowerbed.platform.simulation import run_experiment

    base = tomllib.loads(GRID.read_text())["base"]
    flat = {**base, "num-server-rounds": rounds, "output-dir": output_dir, "experiment": "allocator"}
    outcome = run_experiment(flat, quiet=True)
    return [record["seconds"] for record in read_metrics(outcome.run_dir)]


def run_simulation_child(keep: bool, rounds: int) -> list[float]:
    env = {**os.environ, "FLOWERBED_KEEP_FREED_MEMORY": "1" if keep else "0"}
    env.pop("OMP_NUM_THREADS", None)  # the server evaluates on every core, as in a bench cell
    with tempfile.TemporaryDirectory() as output_dir:
        command = [sys.executable, __file__, SIMULATION_CHILD_FLAG, "--simulation", str(rounds), "--out", output_dir]
        output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def run_child(keep: bool, images: int, eval_images: int) -> dict[str, float]:
    env = {**os.environ, "FLOWERBED_KEEP_FREED_MEMORY": "1" if keep else "0", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, CHILD_FLAG, "--images", str(images), "--eval-images", str(eval_images)]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="training images (one client epoch)")
    parser.add_argument("--eval-images", type=int, default=3700, help="images evaluated (one server round)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--simulation", type=int, default=0, metavar="ROUNDS", help="also time ROUNDS simulated rounds")
    parser.add_argument(CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(SIMULATION_CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.images, args.eval_images)))
        return
    if args.simulation_child:
        print(json.dumps(simulation_child(args.simulation, args.out)))
        return

    results: dict[str, list[dict[str, float]]] = {"malloc defaults": [], "flowerbed settings": []}
    for _ in range(args.repeats):  # alternate, so a change in the machine's load hits both sides
        results["malloc defaults"].append(run_child(False, args.images, args.eval_images))
        results["flowerbed settings"].append(run_child(True, args.images, args.eval_images))
    if not results["flowerbed settings"][0]["applied"]:
        print("note: mallopt is not available here (not glibc); both sides ran malloc's defaults")

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; python {platform.python_version()}")
    print(f"one client epoch: {args.images} images; one server evaluation: {args.eval_images} images; {args.repeats} repeats")
    print()
    print("| malloc | train CPU s | eval CPU s | kernel share of CPU | minor page faults | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for side, runs in results.items():
        print(
            f"| {side} | {min(r['train'] for r in runs):.3f} | {min(r['eval'] for r in runs):.3f} "
            f"| {statistics.median(r['system_share'] for r in runs):.1%} "
            f"| {statistics.median(r['minor_faults'] for r in runs):,.0f} "
            f"| {statistics.median(r['peak_rss_mb'] for r in runs):.0f} |"
        )
    if args.simulation:
        seconds: dict[str, list[float]] = {"malloc defaults": [], "flowerbed settings": []}
        for _ in range(args.repeats):
            seconds["malloc defaults"] += run_simulation_child(False, args.simulation)[1:]
            seconds["flowerbed settings"] += run_simulation_child(True, args.simulation)[1:]
        print()
        print(f"bench-dmba federation, no attacker: {args.simulation} rounds x {args.repeats} repeats (round 1 left out)")
        print()
        print("| malloc | median s/round | min s/round |")
        print("|---|---:|---:|")
        for side, values in seconds.items():
            print(f"| {side} | {statistics.median(values):.2f} | {min(values):.2f} |")


if __name__ == "__main__":
    main()
