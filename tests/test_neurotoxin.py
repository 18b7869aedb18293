"""Neurotoxin's mask sources and the platform's benign reference update (Attack.on_benign_update)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flowerbed.clients.attack import Attack
from flowerbed.clients.attacks.neurotoxin import MEMORY_PREFIX, Neurotoxin
from flowerbed.clients.triggers.base import Backdoor
from flowerbed.clients.triggers.patch import PatchTrigger
from flowerbed.platform import client_app, messages
from flowerbed.platform.config import parse_run_config
from flowerbed.platform.seeding import generator, seed_torch
from flowerbed.platform.workload import TrainContext
from flowerbed.workloads.image_classification.workload import ImageClassification


def neurotoxin(**params) -> Neurotoxin:
    backdoor = Backdoor("patch-0", PatchTrigger(image_shape=(3, 32, 32)), 7)
    return Neurotoxin(params, backdoor=backdoor, poison_fraction=0.5)


def linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(10, 2)  # 22 trainable coordinates


def sparse_change(entries: dict[tuple[str, tuple[int, ...]], float]) -> dict[str, torch.Tensor]:
    change = {"weight": torch.zeros(2, 10), "bias": torch.zeros(2)}
    for (name, index), value in entries.items():
        change[name][index] = value
    return change


def masked_coordinates(masks: dict[str, torch.Tensor]) -> set[tuple[str, tuple[int, ...]]]:
    return {(name, tuple(int(i) for i in index)) for name, mask in masks.items() for index in torch.nonzero(mask == 0)}


# Two benign directions with disjoint top-6 coordinates (6 = round(0.25 * 22)).
BENIGN = {("weight", (0, 0)): 0.9, ("weight", (0, 1)): -0.8, ("weight", (0, 2)): 0.7,
          ("weight", (1, 3)): -0.6, ("weight", (1, 4)): 0.5, ("bias", (0,)): -1.0, ("weight", (1, 9)): 0.01}
GLOBAL = {("weight", (1, 0)): 5.0, ("weight", (1, 1)): -4.0, ("weight", (1, 2)): 3.0,
          ("weight", (0, 8)): -2.5, ("weight", (0, 9)): 2.0, ("bias", (1,)): -6.0, ("weight", (0, 7)): 0.1}


def top6(entries) -> set:
    return set(sorted(entries, key=lambda key: -abs(entries[key]))[:6])


def test_first_active_round_masks_the_top_share_of_the_benign_update_then_the_global_change():
    model = linear()
    attack = neurotoxin(**{"mask-ratio": 0.25})  # default mask-source: global-update
    memory: dict[str, torch.Tensor] = {}
    start = {k: v.clone() for k, v in model.state_dict().items()}

    # Round 1: no previous global model in memory, so the platform is asked for the benign update.
    assert attack.wants_benign_update(memory)
    attack.on_benign_update(sparse_change(BENIGN), memory)
    attack.on_train_start(model, start, memory)
    assert attack.masks is not None
    assert masked_coordinates(attack.masks) == top6(BENIGN)
    assert torch.equal(memory[MEMORY_PREFIX + "weight"], start["weight"])

    # Round 2: the previous global model is remembered, so no benign training is asked for and the
    # mask is the top share of the global change, even if a benign update were handed in.
    assert not attack.wants_benign_update(memory)
    change = sparse_change(GLOBAL)
    now = {k: start[k] + change[k] for k in start}
    model.load_state_dict(now)
    attack.on_benign_update(sparse_change(BENIGN), memory)
    attack.on_train_start(model, now, memory)
    assert masked_coordinates(attack.masks) == top6(GLOBAL)
    assert torch.equal(memory[MEMORY_PREFIX + "bias"], now["bias"])


def test_benign_update_source_always_asks_and_ignores_the_global_change():
    model = linear()
    attack = neurotoxin(**{"mask-ratio": 0.25, "mask-source": "benign-update"})
    memory: dict[str, torch.Tensor] = {}
    start = {k: v.clone() for k, v in model.state_dict().items()}
    assert attack.wants_benign_update(memory)
    attack.on_benign_update(sparse_change(GLOBAL), memory)
    attack.on_train_start(model, start, memory)
    assert masked_coordinates(attack.masks) == top6(GLOBAL)

    change = sparse_change(GLOBAL)
    now = {k: start[k] + change[k] for k in start}
    assert attack.wants_benign_update(memory), "the authors' code takes a fresh benign direction every round"
    attack.on_benign_update(sparse_change(BENIGN), memory)
    attack.on_train_start(model, now, memory)
    assert masked_coordinates(attack.masks) == top6(BENIGN)

    # A benign update is used for its own round only: a platform that does not supply one fails loudly.
    with pytest.raises(RuntimeError, match="on_benign_update"):
        attack.on_train_start(model, now, memory)


def test_mask_ratio_zero_masks_nothing_and_asks_for_nothing():
    attack = neurotoxin(**{"mask-ratio": 0.0, "mask-source": "benign-update"})
    model = linear()
    assert not attack.wants_benign_update({}) and not Attack.wants_benign_update(attack, {})
    attack.on_train_start(model, model.state_dict(), {})
    assert attack.masks is None


def test_mask_source_is_validated_with_its_key():
    with pytest.raises(Exception, match="mask-source"):
        neurotoxin(**{"mask-source": "gradient"})


# --- the ClientApp's benign reference training ------------------------------------------------


def run_config(small_run, **attack) -> str:
    flat = dict(small_run)
    flat.update({"data.train-size": 400, "num-clients": 4, "local-epochs": 1, "lr": 0.05,
                 "attack.name": "neurotoxin", "attack.num-attackers": 1, "attack.attacker-ids": "0",
                 "attack.neurotoxin.poison-epochs": 2, "attack.neurotoxin.attacker-lr": 0.2})
    flat.update({f"attack.neurotoxin.{key}": value for key, value in attack.items()})
    return messages.config_json(parse_run_config(flat))


def test_client_app_hands_the_attacker_a_clean_benign_update_and_trains_it_only_when_asked(small_run, monkeypatch):
    config_json = run_config(small_run, **{"mask-ratio": 0.1})
    runtime = client_app.runtime_for(config_json)
    config, workload = runtime.config, runtime.workload
    attack = runtime.plan.attacker_for(0).attack
    node = messages.node_context(0, 4)
    torch.manual_seed(1)
    global_state = {k: v.clone() for k, v in workload.build_model().state_dict().items()}

    received, trainings = [], []
    hand_over = attack.on_benign_update

    def recording_hand_over(update, memory):
        received.append(update)
        hand_over(update, memory)

    def counting_train(model, dataset, context):
        trainings.append(context)
        return ImageClassification.train(workload, model, dataset, context)

    monkeypatch.setattr(attack, "on_benign_update", recording_hand_over)
    monkeypatch.setattr(workload, "train", counting_train)
    client_app.train(messages.train_message(config_json, 1, global_state), node)

    # Round 1 (no previous global model): two trainings, the first the benign reference.
    assert len(received) == 1 and len(trainings) == 2
    reference_context, attack_context = trainings
    assert reference_context.poison_batch is None and reference_context.after_backward is None
    assert (reference_context.local_epochs, reference_context.lr) == (config.local_epochs, config.lr)
    assert attack_context.poison_batch is not None and (attack_context.local_epochs, attack_context.lr) == (2, 0.2)

    # The update equals an independent clean training of the global model with the same generators.
    model = workload.build_model()
    model.load_state_dict(global_state)
    context = TrainContext(server_round=1, partition_id=0, num_partitions=4, local_epochs=config.local_epochs,
                           lr=config.lr, batch_size=config.batch_size,
                           generator=generator(config.seed, "benign-reference", 1, 0))
    seed_torch(config.seed, "benign-reference-torch", 1, 0)
    ImageClassification.train(workload, model, workload.client_dataset(0, 4), context)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert set(received[0]) == set(trainable)
    for name, parameter in trainable.items():
        assert torch.equal(received[0][name], parameter.detach() - global_state[name]), name
    assert any(update.abs().sum() > 0 for update in received[0].values())

    # Round 2 with the default global-update source: the previous global model is in memory, no reference.
    assert any(key.startswith(MEMORY_PREFIX) for key in client_app._load_memory(node))
    received.clear()
    trainings.clear()
    client_app.train(messages.train_message(config_json, 2, global_state), node)
    assert received == [] and len(trainings) == 1
