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


def _site_folder(root, counts: dict[str, int], size: int = 20):
    from PIL import Image

    for label, count in counts.items():
        (root / label).mkdir(parents=True)
        for k in range(count):
            Image.new("RGB", (size, size), (40 * k % 255, 90, 200)).save(root / label / f"{k}.png")
    return root


def test_a_node_with_a_data_root_trains_on_the_sites_own_images(small_run, tmp_path):
    """A SuperNode started with node config data-root=<folder> trains on that folder's images
    (one folder per class label), brought to the dataset's size, instead of its partition."""
    config_json = messages.config_json(parse_run_config(small_run))
    runtime = client_app.runtime_for(config_json)
    site = _site_folder(tmp_path / "site", {"3": 5, "7": 2})
    dataset = runtime.workload.site_dataset(str(site))
    assert dataset.images.shape == (7, 3, 32, 32) and dataset.images.dtype == torch.uint8
    assert sorted(dataset.labels.tolist()) == [3] * 5 + [7] * 2

    global_state = {k: v.clone() for k, v in runtime.workload.build_model().state_dict().items()}
    message = messages.train_message(config_json, 1, global_state)
    reply = client_app.train(message, messages.node_context(1, 4, data_root=str(site)))
    assert int(reply.content[messages.METRICS_RECORD]["num-examples"]) == 7  # the site's images, not partition 1
    assert int(reply.content[messages.METRICS_RECORD][messages.PARTITION_ID_KEY]) == 1  # its role is still its id's


def test_a_data_root_that_is_missing_or_not_one_folder_per_label_is_named(small_run, tmp_path):
    import pytest

    from flowerbed.platform.errors import ConfigError

    workload = client_app.runtime_for(messages.config_json(parse_run_config(small_run))).workload
    with pytest.raises(ConfigError, match=r"node config 'data-root': '.*nowhere' is not a folder"):
        workload.site_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"one folder per class named 0..9 \(found \['12', 'cats'\]\)"):
        workload.site_dataset(str(_site_folder(tmp_path / "odd", {"1": 1, "12": 1, "cats": 1})))
    (tmp_path / "empty" / "4").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"node config 'data-root': .*"):
        workload.site_dataset(str(tmp_path / "empty"))
