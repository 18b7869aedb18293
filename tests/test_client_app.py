"""The ClientApp's two steps: local training (``train_locally``), then what the client sends (``train``)."""

from __future__ import annotations

import torch

from flowerbed.platform import client_app, messages
from flowerbed.platform.arrays import RUNNING_STATISTICS
from flowerbed.platform.config import parse_run_config

BOOST = 3.0


def dmba_run(small_run) -> str:
    flat = dict(small_run)
    flat.update({"data.train-size": 400, "local-epochs": 1, "lr": 0.05, "attack.name": "dmba",
                 "attack.num-attackers": 2, "attack.attacker-ids": "0,1", "attack.targets": "0,1",
                 "attack.dmba.boost": BOOST, "attack.dmba.poison-epochs": 2})
    return messages.config_json(parse_run_config(flat))


def test_an_attacker_sends_its_trained_model_crafted_and_reports_the_trained_models_local_asr(small_run):
    config_json = dmba_run(small_run)
    runtime = client_app.runtime_for(config_json)
    torch.manual_seed(3)
    global_state = {k: v.clone() for k, v in runtime.workload.build_model().state_dict().items()}

    message = messages.train_message(config_json, 1, global_state)
    trained = client_app.train_locally(message, messages.node_context(0, 4))
    reply = client_app.train(message, messages.node_context(0, 4))
    sent = reply.content["arrays"].to_torch_state_dict()

    assert trained.attack is runtime.plan.attacker_for(0).attack
    # The report is measured on the trained model, not on the boosted one it sends.
    assert dict(reply.content[messages.ATTACK_REPORT_KEY]) == trained.report
    dataset = runtime.workload.client_dataset(0, 4)
    assert trained.report == client_app.local_backdoor_report(
        runtime.workload, trained.model, dataset, trained.attack.backdoors
    )
    # What it sends: the learned weights' update boosted, BatchNorm statistics and counters as trained.
    learned = [key for key, value in global_state.items() if torch.is_floating_point(value)
               and not key.endswith(RUNNING_STATISTICS)]
    assert learned and any(not torch.equal(trained.local_state[key], global_state[key]) for key in learned)
    for key, value in sent.items():
        if key in learned:
            expected = global_state[key] + BOOST * (trained.local_state[key] - global_state[key])
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(value, trained.local_state[key]), key


def test_a_benign_client_sends_exactly_its_trained_model_and_reports_nothing(small_run):
    config_json = dmba_run(small_run)
    torch.manual_seed(3)
    global_state = {k: v.clone() for k, v in client_app.runtime_for(config_json).workload.build_model().state_dict().items()}

    message = messages.train_message(config_json, 1, global_state)
    trained = client_app.train_locally(message, messages.node_context(2, 4))
    reply = client_app.train(message, messages.node_context(2, 4))

    assert trained.attack is None and trained.report == {}
    assert messages.ATTACK_REPORT_KEY not in reply.content.config_records
    sent = reply.content["arrays"].to_torch_state_dict()
    assert sent.keys() == trained.local_state.keys()
    assert all(torch.equal(sent[key], trained.local_state[key]) for key in sent)
    assert int(reply.content["metrics"]["attacked"]) == 0 and int(reply.content["metrics"]["partition-id"]) == 2
