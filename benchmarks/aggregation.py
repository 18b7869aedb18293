"""Time every registered defence's aggregation on ResNet-18-sized updates.

Builds one global model with torchvision's ResNet-18 layout (11.2M parameters,
float32, 10 classes) and ``--clients`` random client models in memory, then
times each strategy's ``aggregate_train`` on fresh Flower reply Messages
("end-to-end": reading the ArrayRecords, the rule, building the new model) in
two consecutive rounds of one strategy: the first round allocates the update
matrix, later rounds reuse its memory (as every round after the first of a run
does). Like the ServerApp, the process keeps freed memory (platform/allocator.py).
For the defences flowerbed implements on the update matrix it also times the
rule alone on an already-flattened ``UpdateBatch`` ("rule"). With
``--flower-reference`` it also times Flower's own strategy for the rules
flowerbed reimplements (median, trimmed mean, Krum, Multi-Krum, Bulyan).
Prints a markdown table. Memory: the client models (clients x 45 MB) plus,
per defence, up to two more copies (the update matrix; Flower's Krum family
stacks every model in float64, four more copies).

    OMP_NUM_THREADS=1 python benchmarks/aggregation.py [--clients 100] [--only krum,flame] [--flower-reference]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import time

import numpy as np
import torch
import torchvision
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategy
from flwr.supercore.task_identity import TaskIdentity

from flowerbed.platform.allocator import keep_freed_memory
from flowerbed.platform.registry import STRATEGIES
from flowerbed.platform.server_model import ServerModelHooks
from flowerbed.strategies.core.update_defence import UpdateDefence
from flowerbed.strategies.core.updates import UpdateBatch

# How each rule's cost grows with n clients and d parameters (default O(n d)).
COST = {
    "krum": "O(n^2 d): pairwise distances",
    "multi-krum": "O(n^2 d): pairwise distances",
    "bulyan": "O(n^2 d): pairwise distances, then a per-coordinate selection",
    "flame": "O(n^2 d): cosine Gram matrix",
    "foolsgold": "O(n^2 d): cosine Gram matrix of the histories",
    "freqfed": "O(n d log d) DCT + O(n^2 k) cosine matrix",
    "deepsight": "O(n^2) clustering on the output layer only (DDifs off: no model here)",
    "median": "O(n d log n): sort each coordinate's n values (cache-sized blocks)",
    "trimmed-mean": "O(n d log n): sort each coordinate's n values (cache-sized blocks)",
    "rfa": "O(T n d): T <= max-iterations + 1 Weiszfeld passes (distances, weighted sum)",
}

# Rules flowerbed computes block by block from the replies (robust_aggregation/coordinatewise.py,
# krum_selection.py): they hold no copy of the client models. Everything else may hold two.
BLOCKWISE = {"median", "trimmed-mean", "krum", "multi-krum", "bulyan"}


def flower_twin(name: str, num_clients: int):
    """Flower's own strategy computing the same aggregate as ``name`` (parameters as in :func:`build`)."""
    num_malicious = (num_clients - 3) // 4
    return {
        "median": lambda: flwr_strategy.FedMedian(),
        "trimmed-mean": lambda: flwr_strategy.FedTrimmedAvg(beta=0.2),
        "krum": lambda: flwr_strategy.Krum(num_malicious_nodes=num_malicious),
        "multi-krum": lambda: flwr_strategy.MultiKrum(
            num_malicious_nodes=num_malicious, num_nodes_to_select=num_clients - num_malicious
        ),
        "bulyan": lambda: flwr_strategy.Bulyan(num_malicious_nodes=num_malicious),
    }[name]()


def copies_needed(name: str, flower: bool) -> int:
    """Extra copies of the client models one measurement may hold (Flower's Krum family: float64, so 2 x 2)."""
    if flower:
        return 4 if name in {"krum", "multi-krum", "bulyan"} else 1
    return 0 if name in BLOCKWISE else 2


class BenchGrid:
    """Flower's Grid as far as FedAvg.configure_train uses it."""

    def __init__(self, num_nodes: int) -> None:
        self.num_nodes = num_nodes

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.num_nodes + 1))


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def resnet18_global(seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    return {key: value.numpy().copy() for key, value in state.items()}


def client_arrays(global_model: dict[str, np.ndarray], num_clients: int, seed: int) -> list[dict[str, Array]]:
    """Each client's model: global + N(0, 0.01^2) on the float arrays, counter + 50 batches (as Array bytes)."""
    rng = np.random.default_rng(seed)
    clients = []
    for _ in range(num_clients):
        arrays = {}
        for key, value in global_model.items():
            if np.issubdtype(value.dtype, np.floating):
                local = value + rng.standard_normal(value.shape, dtype=np.float32) * np.float32(0.01)
            else:
                local = value + 50
            arrays[key] = Array(np.asarray(local))
        clients.append(arrays)
    return clients


def replies_from(clients: list[dict[str, Array]]) -> list[Message]:
    """Fresh reply Messages sharing the clients' Array bytes (some Flower rules pop arrays from replies)."""
    return [
        Message(
            content=RecordDict(
                {
                    "arrays": ArrayRecord(dict(arrays)),
                    "metrics": MetricRecord({"num-examples": 100 + index, "partition-id": index}),
                }
            ),
            dst_node_id=index + 1,
            message_type=MessageType.TRAIN,
        )
        for index, arrays in enumerate(clients)
    ]


def build(name: str, num_clients: int, root: ServerModelHooks):
    params = {"num-malicious": (num_clients - 3) // 4} if name in {"krum", "multi-krum", "bulyan"} else None
    if name == "rlr":
        params = {"threshold": max(1, num_clients // 4)}
    return STRATEGIES.get(name)(params, fraction_train=1.0, num_clients_per_round=num_clients, seed=0, root_data=root)


def time_one(name: str, rule_only: bool, setup: dict, connection, flower: bool = False) -> None:
    """Child process: time one strategy (the rule alone, or two rounds of aggregate_train end to end).

    Sends ((wall seconds, CPU seconds of this process) per timed round, flagged); on a shared machine the CPU
    time is the steadier number. ``flower``: time Flower's own strategy for ``name`` instead (flagged is then
    -1: Flower does not report it).
    """
    clients, global_record, root = setup["clients"], setup["global_record"], setup["root"]
    strategy = flower_twin(name, len(clients)) if flower else build(name, len(clients), root)
    if rule_only:
        strategy.configure_train(1, global_record, ConfigRecord(), BenchGrid(len(clients)))
        batch = UpdateBatch.from_contents([reply.content for reply in replies_from(clients)], global_record)
        start, cpu_start = time.perf_counter(), time.process_time()
        result = strategy.aggregate_updates(batch, 1)
        timings = [(time.perf_counter() - start, time.process_time() - cpu_start)]
        flagged = int((~result.accepted).sum())
    else:
        timings = []
        for server_round in (1, 2):
            strategy.configure_train(server_round, global_record, ConfigRecord(), BenchGrid(len(clients)))
            replies = replies_from(clients)
            start, cpu_start = time.perf_counter(), time.process_time()
            arrays, _ = strategy.aggregate_train(server_round, replies)
            timings.append((time.perf_counter() - start, time.process_time() - cpu_start))
            assert arrays is not None, name
            del arrays, replies
        flagged = -1 if flower else len(strategy.last_flagged)
    connection.send((timings, flagged))


def measure(name: str, rule_only: bool, setup: dict, flower: bool = False) -> tuple[list[tuple[float, float]], int] | None:
    """Run :func:`time_one` in a forked child (it shares the client arrays; its memory is freed on exit)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=time_one, args=(name, rule_only, setup, sender, flower), daemon=True)
    child.start()
    child.join()
    return receiver.recv() if child.exitcode == 0 and receiver.poll() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--only", default="", help="comma-separated strategy names (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--flower-reference",
        action="store_true",
        help="also time Flower's own strategy for median, trimmed-mean, krum, multi-krum and bulyan",
    )
    args = parser.parse_args()
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    keep_freed_memory()
    logging.getLogger("flwr").setLevel(logging.ERROR)

    names = args.only.split(",") if args.only else STRATEGIES.names()
    global_model = resnet18_global(args.seed)
    model_bytes = sum(value.nbytes for value in global_model.values())
    references = [name for name in names if args.flower_reference and name in BLOCKWISE]
    copies = 1 + max([copies_needed(name, False) for name in names] + [copies_needed(name, True) for name in references])
    needed = copies * args.clients * model_bytes + (1 << 30)
    available = available_memory()
    if needed > available:
        raise SystemExit(
            f"needs about {needed / 2**30:.1f} GB ({copies} copies of {args.clients} models), {available / 2**30:.1f} GB"
            " free; pass a smaller --clients or fewer --only names"
        )
    num_parameters = sum(v.size for v in global_model.values() if np.issubdtype(v.dtype, np.floating))
    root_model = ArrayRecord({key: Array(np.asarray(value + 0.001)) for key, value in global_model.items()})
    setup = {
        "clients": client_arrays(global_model, args.clients, args.seed),
        "global_record": ArrayRecord({key: Array(np.asarray(value)) for key, value in global_model.items()}),
        "root": ServerModelHooks(root_update=lambda arrays, server_round: root_model),
    }

    print(
        f"{args.clients} clients x {num_parameters / 1e6:.2f}M float32 parameters (ResNet-18, 10 classes);"
        f" torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}\n"
    )
    reference_header = " Flower's own strategy, later round (s) |" if references else ""
    print(
        "| defence | round 1 end-to-end (s) | later round end-to-end (s) | later round CPU (s) |"
        f" rule on the update matrix (s) |{reference_header} flagged | cost |"
    )
    print("|---|---:|---:|---:|---:|" + ("---:|" if references else "") + "---:|---|")

    def seconds(result: tuple[list[tuple[float, float]], int] | None, round_index: int, column: int = 0) -> str:
        return "killed (out of memory?)" if result is None else f"{result[0][round_index][column]:.2f}"

    for name in names:
        end_to_end = measure(name, False, setup)
        rule = measure(name, True, setup) if issubclass(STRATEGIES.get(name), UpdateDefence) else None
        rule_text = "-" if rule is None else seconds(rule, 0)
        reference_text = ""
        if references:
            reference_text = f" {seconds(measure(name, False, setup, flower=True), 1)} |" if name in references else " - |"
        flagged = "-" if end_to_end is None else str(end_to_end[1])
        print(
            f"| {name} | {seconds(end_to_end, 0)} | {seconds(end_to_end, 1)} | {seconds(end_to_end, 1, 1)} |"
            f" {rule_text} |{reference_text} {flagged} | {COST.get(name, 'O(n d)')} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
