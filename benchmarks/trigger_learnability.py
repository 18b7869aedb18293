"""Does an attacker's own model learn its trigger? One attack round, at several trigger settings.

A backdoor that is weak in the global model may have been averaged away, or never learned by
the attacker in the first place; a defence can only be credited with the first. This runs the
first attack round of every attacker of a grid cell exactly as the ClientApp does (the real
``client_app.train_locally``, same generators, starting from the grid's pre-trained model) for
each ``--set`` of run-config keys (trigger or attack), and prints a Markdown table, a row per
attacker: its local ASR (its trained model on its own images, as ``local_asr`` in
metrics.jsonl), the rate at which the same model sends *untriggered* images to the target
(what the local ASR is when the trigger is not learned at all) and that model's ASR on the
test set. All three are the trained model's, before the attack crafts (e.g. boosts) its update.

    OMP_NUM_THREADS=1 python benchmarks/trigger_learnability.py --attack ftrojan \\
        --set trigger.frequency.window=0,trigger.frequency.magnitude=30 \\
        --set trigger.frequency.window=8,trigger.frequency.magnitude=30
    OMP_NUM_THREADS=1 python benchmarks/trigger_learnability.py --attack dmba --seed 1 \\
        --set "" --set attack.dmba.replay=none --set attack.dmba.poison-epochs=30

FTrojan (Wang et al., ECCV 2022) adds its magnitude to DCT coefficients of the chroma channels,
over the whole image in its CIFAR setting; DMBA's triggers (Liu et al., arXiv 2411.03926) use
8 x 8 blocks. Needs the grid's pre-training (``flowerbed bench`` makes it in ``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from flowerbed.bench.grid import read_grid
from flowerbed.platform import client_app, messages
from flowerbed.platform.config import parse_run_config
from flowerbed.platform.initial_model import load_initial_weights
from flowerbed.workloads.image_classification.workload import triggered_success


def parse_assignments(text: str) -> dict[str, object]:
    """``key=value,key=value`` -> {key: value}, numbers as numbers."""
    settings: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        try:
            settings[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.strip()] = value.strip()
    return settings


def first_attack_round(flat: dict[str, object]) -> list[dict[str, object]]:
    """Train every attacker's first attack round through the ClientApp; return what each measured.

    Everything is measured on the attacker's *trained* model, before ``craft`` shapes (e.g.
    boosts) the update it sends, so the untriggered rate is the baseline of its local ASR.
    """
    config = parse_run_config(flat)
    config_json = messages.config_json(config)
    runtime = client_app.runtime_for(config_json)
    workload, plan = runtime.workload, runtime.plan
    rows = []
    for partition_id in plan.attacker_ids:
        attacker = plan.attacker_for(partition_id)
        server_round = attacker.schedule.start
        model = workload.build_model()
        if not load_initial_weights(model, config):
            raise SystemExit("the grid cell has no model.init: run `flowerbed bench` once so that its pre-training exists")
        message = messages.train_message(config_json, server_round, model.state_dict())
        node = messages.node_context(partition_id, config.num_clients)
        began = time.perf_counter()
        trained = client_app.train_locally(message, node)
        seconds = time.perf_counter() - began
        backdoor = attacker.attack.backdoors[0]
        dataset = workload.client_dataset(partition_id, config.num_clients)
        untriggered = SimpleNamespace(
            trigger=SimpleNamespace(apply=lambda x: x), target=backdoor.target, source_classes=backdoor.source_classes
        )
        rows.append(
            {
                "partition": partition_id,
                "target": backdoor.target,
                "images": len(dataset),
                "local_asr": float(trained.report[backdoor.name]),
                "untriggered": triggered_success(trained.model, dataset.images, dataset.labels, untriggered),
                "test_asr": workload.attack_success_rate(trained.model, backdoor),
                "seconds": seconds,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="experiments/bench-dmba.toml")
    parser.add_argument("--out", default="benchmarks/bench-dmba", help="the grid's output folder (its pre-training)")
    parser.add_argument("--attack", default="ftrojan", help="attack label of the grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="run-config keys for one setting: key=value,key=value")
    parser.add_argument("--cache-dir", default="", help="data.cache-dir for the run (default: the config's)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    grid = read_grid(args.grid)
    (cell,) = [c for c in grid.cells() if c.attack == args.attack and c.seed == args.seed and c.defence == "fedavg"]
    base = cell.flat_config(Path(args.out) / "cells" / cell.name)
    if args.cache_dir:
        base["data.cache-dir"] = args.cache_dir
    print(f"grid {args.grid}, attack {args.attack}, seed {args.seed}, each attacker's first attack round")
    print("| settings | attacker | target | its images | local ASR | untriggered -> target | test ASR of its model | s |")
    print("|---|---|---|---|---|---|---|---|")
    for text in args.set or [""]:
        settings = parse_assignments(text)
        label = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in settings.items()) or "the grid's"
        for row in first_attack_round({**base, **settings}):
            print(
                f"| {label} | {row['partition']} | {row['target']} | {row['images']} | {row['local_asr']:.3f} "
                f"| {row['untriggered']:.3f} | {row['test_asr']:.3f} | {row['seconds']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
