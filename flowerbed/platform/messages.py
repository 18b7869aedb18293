"""The wire format between the ServerApp and the ClientApps: every record name and key, and
the helpers that write and read them. Server and clients both import this module; neither
imports the other.

Server -> client (train and query messages): a ConfigRecord ``config`` holding the resolved
run config as JSON (``CONFIG_KEY``) and, for training, the round (``SERVER_ROUND_KEY``); an
ArrayRecord ``arrays`` with the global model.

Client -> server (train replies): ``arrays`` (the model it sends), a MetricRecord ``metrics``
(its train metrics, ``num-examples``, its ``partition-id`` and whether it ``attacked``) and,
from an active attacker, a ConfigRecord ``attack-report``: backdoor name -> the ASR of its
trained local model on its own data. Not a MetricRecord: Flower's strategies require every
reply's MetricRecord to have the same keys.

A node's Context holds its partition in the node config (``partition-id``,
``num-partitions``), as Flower's simulation and ``flower-supernode --node-config`` set it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict

if TYPE_CHECKING:
    from flowerbed.platform.config import RunConfig

# Record names inside a message's content.
CONFIG_RECORD = "config"
ARRAYS_RECORD = "arrays"
METRICS_RECORD = "metrics"
ATTACK_REPORT_KEY = "attack-report"

# Keys of the server's ConfigRecord.
CONFIG_KEY = "flowerbed-config"
SERVER_ROUND_KEY = "server-round"

# Keys of a reply's MetricRecord (and of the node config, for the partition).
PARTITION_ID_KEY = "partition-id"
NUM_PARTITIONS_KEY = "num-partitions"
DATA_ROOT_KEY = "data-root"  # node config: a site's own data folder, instead of its partition
NUM_EXAMPLES_KEY = "num-examples"
ATTACKED_KEY = "attacked"


def config_json(config: RunConfig) -> str:
    """The resolved config as the JSON every server message carries (what a client's runtime is keyed by)."""
    return json.dumps(config.to_flat(), sort_keys=True)


def config_record(config: RunConfig) -> ConfigRecord:
    """The ConfigRecord every server message carries: the resolved config as JSON."""
    return ConfigRecord({CONFIG_KEY: config_json(config)})


def config_json_of(msg: Message) -> str:
    """The run config JSON a server message carries."""
    return str(msg.content[CONFIG_RECORD][CONFIG_KEY])


def server_round_of(msg: Message) -> int:
    """The round a train message belongs to."""
    return int(msg.content[CONFIG_RECORD][SERVER_ROUND_KEY])


def partition_of(context: Context) -> tuple[int, int]:
    """(partition id, number of partitions) of the node running ``context``."""
    return int(context.node_config[PARTITION_ID_KEY]), int(context.node_config[NUM_PARTITIONS_KEY])


def site_data_root(context: Context) -> str:
    """The node's own data folder (node config ``data-root``); "" for a share of the run's dataset."""
    return str(context.node_config.get(DATA_ROOT_KEY, ""))


def reply_partition_id(reply: Message) -> int:
    """The partition id a (sanitized) reply reports."""
    return int(reply.content[METRICS_RECORD][PARTITION_ID_KEY])


def reply_attacked(reply: Message) -> bool:
    """Whether the client that sent ``reply`` attacked in this round."""
    return bool(int(reply.content[METRICS_RECORD].get(ATTACKED_KEY, 0)))


def identity_reply(msg: Message, partition_id: int, num_partitions: int) -> Message:
    """A node's answer to the server's query: the partition it holds."""
    metrics = MetricRecord({PARTITION_ID_KEY: partition_id, NUM_PARTITIONS_KEY: num_partitions})
    return Message(content=RecordDict({METRICS_RECORD: metrics}), reply_to=msg)


def train_reply(
    msg: Message, state: dict[str, torch.Tensor], metrics: dict[str, float], partition_id: int, attacked: bool,
    report: dict[str, float],
) -> Message:
    """A client's train reply: the state it sends, its metrics, and an attacker's local ASR report."""
    reply_metrics = {key: float(value) for key, value in metrics.items() if key != NUM_EXAMPLES_KEY}
    reply_metrics.update(
        {NUM_EXAMPLES_KEY: int(metrics[NUM_EXAMPLES_KEY]), PARTITION_ID_KEY: partition_id, ATTACKED_KEY: int(attacked)}
    )
    content = RecordDict({ARRAYS_RECORD: ArrayRecord(state), METRICS_RECORD: MetricRecord(reply_metrics)})
    if report:
        content[ATTACK_REPORT_KEY] = ConfigRecord(report)
    return Message(content=content, reply_to=msg)


def attack_report_of(reply: Message) -> dict[str, float]:
    """Backdoor name -> local ASR from an attacker's reply ({} for anyone else)."""
    report = reply.content.config_records.get(ATTACK_REPORT_KEY)
    if report is None:
        return {}
    return {str(name): float(rate) for name, rate in report.items() if isinstance(rate, int | float)}


def train_message(config_json: str, server_round: int, global_state: dict[str, torch.Tensor]) -> Message:
    """A train Message as a SuperLink delivers it: drives `train` or `train_locally` outside a run."""
    config = ConfigRecord({CONFIG_KEY: config_json, SERVER_ROUND_KEY: server_round})
    metadata = Metadata(
        run_id=1, message_id=f"train-{server_round}", src_node_id=0, dst_node_id=1, reply_to_message_id="",
        group_id="", created_at=0.0, ttl=3600.0, message_type="train",
    )
    return Message(
        content=RecordDict({ARRAYS_RECORD: ArrayRecord(global_state), CONFIG_RECORD: config}), metadata=metadata
    )


def node_context(partition_id: int, num_partitions: int, data_root: str = "") -> Context:
    """The Context of a fresh node (empty state) holding partition `partition_id`, or, given
    `data_root`, a site's own data as a SuperNode started with node config `data-root` has."""
    node_config = {PARTITION_ID_KEY: partition_id, NUM_PARTITIONS_KEY: num_partitions}
    if data_root:
        node_config[DATA_ROOT_KEY] = data_root
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
