"""The Flower ClientApp: benign clients and attackers share one training path.

Every message from the server carries the resolved run config (as JSON), so a
client needs nothing from ``context.run_config`` and the in-process simulation
and ``flwr run`` behave identically. A node's partition id decides its role:
benign, or attacker *k* of the attack plan (a benign client plus an Attack).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from flowerbed.platform import messages
from flowerbed.platform.allocator import keep_freed_memory
from flowerbed.platform.config import RunConfig, parse_run_config
from flowerbed.platform.run_parts import RunParts, build_run
from flowerbed.platform.seeding import generator, seed_torch
from flowerbed.platform.workload import TrainContext, Workload

if TYPE_CHECKING:
    from flowerbed.clients.attack import Attack

# The node's own state (``context.state``), not sent: an attacker's memory across rounds.
MEMORY_KEY = "attack-memory"

app = ClientApp()


@lru_cache(maxsize=2)
def runtime_for(config_json: str) -> RunParts:
    """The run (workload and attack plan; no strategy) one process builds once per run config
    and reuses across rounds and nodes."""
    torch.set_num_threads(1)  # one core per simulated client
    keep_freed_memory()  # fewer page faults per training step (allocator.py)
    return build_run(parse_run_config(json.loads(config_json)), with_strategy=False)


@lru_cache(maxsize=256)
def _client_dataset(config_json: str, partition_id: int, num_partitions: int, data_root: str) -> Any:
    """A node's training data, kept in the process across rounds: its partition of the run's
    dataset, or the site's own data in ``data_root`` (node config ``data-root``)."""
    workload = runtime_for(config_json).workload
    if data_root:
        return workload.site_dataset(data_root)
    return workload.client_dataset(partition_id, num_partitions)


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (it maps node ids to partition ids)."""
    return messages.identity_reply(msg, *messages.partition_of(context))


@dataclass
class LocalTraining:
    """One client's local training of one round, before an attacker shapes what it sends.

    ``local_state`` is the trained model's state (integer buffers as received);
    ``report`` the attacker's local ASR per backdoor (empty for a benign client).
    """

    partition_id: int
    model: torch.nn.Module
    global_state: dict[str, torch.Tensor]
    local_state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    attack: Attack | None  # None: a benign client, or an attacker outside its attack rounds
    memory: dict[str, torch.Tensor]
    report: dict[str, float]


def train_locally(msg: Message, context: Context) -> LocalTraining:
    """Train the received global model on the local partition (poisoned if this client attacks)."""
    config_json = messages.config_json_of(msg)
    runtime = runtime_for(config_json)
    config = runtime.config
    partition_id, num_partitions = messages.partition_of(context)
    server_round = messages.server_round_of(msg)
    dataset = _client_dataset(config_json, partition_id, num_partitions, messages.site_data_root(context))

    seed_torch(config.seed, "client-torch", server_round, partition_id)
    model = runtime.workload.build_model()
    global_state = msg.content[messages.ARRAYS_RECORD].to_torch_state_dict()
    model.load_state_dict(global_state)
    context_ = TrainContext(
        server_round=server_round,
        partition_id=partition_id,
        num_partitions=num_partitions,
        local_epochs=config.local_epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        generator=generator(config.seed, "client", server_round, partition_id),
    )

    attacker = runtime.plan.attacker_for(partition_id)
    attack = attacker.attack if attacker is not None and attacker.schedule.is_active(server_round) else None
    memory: dict[str, torch.Tensor] = {}
    if attack is not None:
        memory = _load_memory(context)
        if attack.wants_benign_update(memory):  # asked before on_train_start, which may change memory
            reference = benign_reference_update(runtime.workload, model, dataset, config, context_)
            attack.on_benign_update(reference, memory)
        overrides = attack.train_overrides()
        context_.local_epochs = int(overrides.get("local-epochs") or context_.local_epochs)
        context_.lr = float(overrides.get("lr") or context_.lr)
        poison_generator = generator(config.seed, "poison", server_round, partition_id)
        context_.poison_batch = lambda x, y: attack.poison(x, y, poison_generator)
        context_.after_backward = attack.after_backward
        attack.on_train_start(model, global_state, memory)

    metrics = runtime.workload.train(model, dataset, context_)
    # Integer buffers (BatchNorm's num_batches_tracked) are counters, not learned weights:
    # they go back unchanged so that distance-based rules (Krum, Bulyan) see only the update.
    local_state = {
        key: value if torch.is_floating_point(value) else global_state[key] for key, value in model.state_dict().items()
    }
    report = {} if attack is None else local_backdoor_report(runtime.workload, model, dataset, attack.backdoors)
    return LocalTraining(partition_id, model, global_state, local_state, metrics, attack, memory, report)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally; an attacker then crafts the update it sends and keeps its memory."""
    trained = train_locally(msg, context)
    local_state = trained.local_state
    if trained.attack is not None:
        local_state = _craft(trained.attack, trained.global_state, local_state, trained.memory)
        context.state[MEMORY_KEY] = ArrayRecord({k: v.detach().clone() for k, v in trained.memory.items()})

    return messages.train_reply(
        msg, local_state, trained.metrics, trained.partition_id, trained.attack is not None, trained.report
    )


def local_backdoor_report(workload: Workload, model: torch.nn.Module, dataset: Any, backdoors) -> dict[str, float]:
    """Backdoor name -> the attack success rate of the attacker's trained model on its own data,
    for the backdoors it implants (before ``craft`` shapes the update it sends); empty when the
    workload cannot measure it. Deterministic and on a forked generator: training is unchanged."""
    with torch.random.fork_rng(devices=[]):
        rates = {backdoor.name: workload.local_backdoor_accuracy(model, dataset, backdoor) for backdoor in backdoors}
    return {name: float(rate) for name, rate in rates.items() if rate is not None}


def benign_reference_update(
    workload: Workload, model: torch.nn.Module, dataset: Any, config: RunConfig, round_context: TrainContext
) -> dict[str, torch.Tensor]:
    """What this client would send if it were honest: ``trained - model`` over the trainable
    parameters, where ``trained`` is a copy of ``model`` (the global model) trained by the
    workload with the run's benign settings (``local-epochs``, ``lr``, ``batch-size``; no
    poisoning, no gradient hook) and its own generators, seeded from (run seed,
    "benign-reference", round, partition id).

    ``model`` is not changed, and torch's global generator (dropout) is forked, so the
    attacker's own training afterwards draws exactly what it would draw without this.
    """
    labels = (round_context.server_round, round_context.partition_id)
    context = TrainContext(
        server_round=round_context.server_round,
        partition_id=round_context.partition_id,
        num_partitions=round_context.num_partitions,
        local_epochs=config.local_epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        generator=generator(config.seed, "benign-reference", *labels),
    )
    trained = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        seed_torch(config.seed, "benign-reference-torch", *labels)
        workload.train(trained, dataset, context)
    start = dict(model.named_parameters())
    with torch.no_grad():
        return {name: value - start[name] for name, value in trained.named_parameters() if value.requires_grad}


def _load_memory(context: Context) -> dict[str, torch.Tensor]:
    if MEMORY_KEY in context.state:
        return dict(context.state[MEMORY_KEY].to_torch_state_dict())
    return {}


def _craft(attack, global_state, local_state, memory) -> dict[str, torch.Tensor]:
    """Let the attack shape its update (local - global) and rebuild the state it sends."""
    floating = [k for k, v in local_state.items() if torch.is_floating_point(v)]
    update = {k: local_state[k] - global_state[k] for k in floating}
    crafted = attack.craft(update, memory)
    result = dict(local_state)
    for key in floating:
        result[key] = global_state[key] + crafted[key]
    return result
