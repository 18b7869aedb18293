"""The server's round loop, driving a Flower strategy over a Grid.

Flower's ``Strategy.start`` runs rounds by itself; flowerbed drives the same
strategy methods (``configure_train`` / ``aggregate_train``) one round at a
time because a security testbed needs more per round: seeded client sampling
over partition ids (so runs reproduce), attackers forced into attack rounds,
malformed updates dropped before the defence sees them, the defence's flagged
ids scored against the ground truth, every round recorded and checkpointed,
and resuming from a checkpoint.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MessageType, RecordDict

from flowerbed.platform import messages
from flowerbed.platform.arrays import update_norm
from flowerbed.platform.config import ConfigError, RunConfig
from flowerbed.platform.errors import RunFailed
from flowerbed.platform.initial_model import load_initial_weights
from flowerbed.platform.progress import Progress
from flowerbed.platform.recorder import METRICS, Recorder
from flowerbed.platform.roles import AttackPlan
from flowerbed.platform.run_parts import RunParts
from flowerbed.platform.sanitize import sanitize_replies
from flowerbed.platform.seeding import derive_seed, seed_torch
from flowerbed.platform.summary import build_summary, detection_scores, scored_clients

logger = logging.getLogger("flowerbed")

DISCOVERY_TIMEOUT = 600.0
NODE_WAIT_SECONDS = 600.0  # for the first node (Ray can take minutes to start on a loaded machine)
NODE_SETTLE_SECONDS = 30.0  # then stop waiting once the node count has not grown for this long


class SampledGrid:
    """A view of a Grid that offers only the nodes sampled for this round.

    Flower's ``configure_train`` samples from ``grid.get_node_ids()``; with this
    view (and ``fraction_train=1``) it addresses exactly flowerbed's sample.
    """

    def __init__(self, grid, node_ids: list[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


@dataclass
class RoundSampler:
    """Seeded choice of the partition ids that train in a round."""

    config: RunConfig
    plan: AttackPlan

    def sample(self, server_round: int) -> list[int]:
        config = self.config
        size = config.clients_per_round()
        rng = np.random.default_rng(derive_seed(config.seed, "sample", server_round))
        chosen = rng.choice(config.num_clients, size=size, replace=False).tolist()
        if self.plan.participation == "forced":
            forced = self.plan.active_ids(server_round)
            others = [pid for pid in chosen if pid not in forced]
            chosen = forced + others[: max(size - len(forced), 0)]
        return sorted(chosen)


def discover_partitions(grid, config: RunConfig) -> dict[int, int]:
    """Ask every node which partition it holds: partition id -> node id.

    Nodes may still be registering when the ServerApp starts (as Flower's own
    ``sample_nodes`` does, wait for them): up to ``NODE_WAIT_SECONDS`` for the
    first, then until all ``num-clients`` are there or the count has not grown for
    ``NODE_SETTLE_SECONDS`` (a federation smaller than the config).
    """
    began = last_change = time.monotonic()
    seen = 0
    while len(node_ids := sorted(grid.get_node_ids())) < config.num_clients:
        now = time.monotonic()
        if len(node_ids) != seen:
            seen, last_change = len(node_ids), now
        if (seen == 0 and now - began > NODE_WAIT_SECONDS) or (seen > 0 and now - last_change > NODE_SETTLE_SECONDS):
            break
        time.sleep(0.5)
    if not node_ids:
        raise RuntimeError(f"no node registered with the ServerApp within {NODE_WAIT_SECONDS:.0f} s (is the machine overloaded?)")
    record = RecordDict({messages.CONFIG_RECORD: messages.config_record(config)})
    queries = [Message(content=record, message_type=MessageType.QUERY, dst_node_id=nid) for nid in node_ids]
    replies = list(grid.send_and_receive(queries, timeout=DISCOVERY_TIMEOUT))
    mapping: dict[int, int] = {}
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed to identify itself: {reply.error.reason}")
        mapping[messages.reply_partition_id(reply)] = reply.metadata.src_node_id
    if len(mapping) != config.num_clients:
        raise ConfigError(
            [
                f"key 'num-clients': the config says {config.num_clients} clients but the federation runs "
                f"{len(mapping)} nodes; with `flwr run` pass --federation-config 'num-supernodes={config.num_clients}'"
            ]
        )
    return mapping


def run_rounds(grid, run: RunParts, recorder: Recorder, progress: Progress) -> dict[str, Any]:
    """Train for ``num-server-rounds`` rounds (from the last checkpoint if resuming); return the summary."""
    config, workload, strategy, plan = run.config, run.workload, run.strategy, run.plan
    logging.getLogger("flwr").setLevel(logging.WARNING)  # flowerbed prints its own progress
    node_of = discover_partitions(grid, config)
    partition_of = {node: pid for pid, node in node_of.items()}

    seed_torch(config.seed, "initial-model")  # the initial global model depends on the seed only
    model = workload.build_model()
    start_round = 1
    checkpoint = recorder.load_checkpoint()
    if checkpoint is not None:
        done, state, strategy_state = checkpoint
        model.load_state_dict(state)
        if hasattr(strategy, "load_state_dict"):
            strategy.load_state_dict(strategy_state)  # e.g. FoolsGold's update histories
        start_round = done + 1
        progress.note(f"resuming after round {done}")
    elif load_initial_weights(model, config):
        progress.note(f"starting from the weights in {config.model.init}")
    arrays = ArrayRecord(model.state_dict())
    sampler = RoundSampler(config, plan)
    train_config = messages.config_record(config)
    health = RunHealth(config.max_failed_share, recorder.rounds)

    for server_round in range(start_round, config.num_server_rounds + 1):
        began = time.perf_counter()
        clients = sampler.sample(server_round)
        view = SampledGrid(grid, [node_of[pid] for pid in clients])
        instructions = list(strategy.configure_train(server_round, arrays, train_config, view))
        replies = list(grid.send_and_receive(instructions, timeout=config.round_timeout))
        # The grid gave each instruction its id; an error the SuperLink writes itself (e.g. its
        # node went away) comes from the SuperLink, and only its reply-to id names the client.
        addressed = {m.metadata.message_id: partition_of.get(m.metadata.dst_node_id, -1) for m in instructions}
        replies, failures = _split_failures(replies, partition_of, addressed)
        answered = {partition_of.get(reply.metadata.src_node_id) for reply in replies} | {
            failure["partition_id"] for failure in failures
        }
        late = f"no reply within round-timeout = {config.round_timeout:g} s"
        failures += [{"partition_id": pid, "reason": late} for pid in clients if pid not in answered]
        replies, dropped = sanitize_replies(replies, arrays)
        failures += [{"partition_id": d.partition_id if d.partition_id is not None else -1, "reason": d.reason} for d in dropped]
        for entry in failures:
            logger.warning("round %d: partition %s left out: %s", server_round, entry["partition_id"], entry["reason"])
        replies.sort(key=messages.reply_partition_id)
        norms = _update_norms(replies, arrays)

        new_arrays, train_metrics = (None, None)
        # Too few updates to aggregate (min-replies): the round is recorded, the model stays.
        aggregated = replies if len(replies) >= config.min_replies else []
        not_aggregated = "" if aggregated or not replies else (
            f"{len(replies)} of {len(clients)} sampled clients' updates arrived and passed, fewer than"
            f" min-replies = {config.min_replies}: the global model is unchanged"
        )
        if not_aggregated:
            logger.warning("round %d: %s", server_round, not_aggregated)
        if aggregated:
            new_arrays, train_metrics = strategy.aggregate_train(server_round, aggregated)
        stopped = health.after_round(server_round, len(clients), len(replies))
        if new_arrays is not None:
            aggregate = new_arrays.to_torch_state_dict()
            if not all_finite(aggregate):
                # Never load it: the global model stays the last finite one, and the run stops.
                stopped = f"round {server_round}: the aggregated model has NaN/Inf values, so the global model is lost"
            else:
                # Back to the model's own dtypes: an average turns integer buffers (BatchNorm's
                # num_batches_tracked) into floats, rounded here (99.999... would truncate to 99).
                model.load_state_dict(_rounded_to_integer_buffers(model, aggregate))
                arrays = ArrayRecord(model.state_dict())
        evaluation = workload.evaluate(model)
        not_finite = [key for key, value in evaluation.items() if isinstance(value, float) and not math.isfinite(value)]
        if not_finite and not stopped:  # e.g. a finite model whose BatchNorm variances went negative
            stopped = f"round {server_round}: the global model evaluates to NaN/Inf ({', '.join(not_finite)}), so it is lost"

        attackers_present = [messages.reply_partition_id(r) for r in aggregated if messages.reply_attacked(r)]
        record: dict[str, Any] = {"round": server_round, **evaluation}
        if train_metrics is not None and "train_loss" in train_metrics:
            record["train_loss"] = float(train_metrics["train_loss"])
        record["clients"] = clients
        if plan.attackers:
            record["attackers"] = attackers_present
            local_asr = attackers_local_asr(aggregated)
            if local_asr:
                record["local_asr"] = local_asr
        # A round without replies aggregated nothing: no flags or weights (the strategy's are last round's).
        flagged = getattr(strategy, "last_flagged", None) if aggregated and getattr(strategy, "flags_clients", False) else None
        if flagged is not None:
            record["flagged"] = sorted(int(pid) for pid in flagged)
            # Scored on the clients the defence saw: failed or dropped replies are neither.
            record["detection"] = detection_scores(record["flagged"], attackers_present, scored_clients(clients, failures))
        weights = getattr(strategy, "last_weights", None) if aggregated else None
        if weights:
            record["weights"] = {str(pid): float(w) for pid, w in sorted(weights.items())}
        record["update_norms"] = norms
        record["failures"] = failures
        if not_aggregated:
            record["not_aggregated"] = not_aggregated
        record["seconds"] = time.perf_counter() - began
        if stopped:
            record["stopped"] = stopped
        recorder.log_round(record)
        if stopped:  # no checkpoint of a lost model; the run ends here, failing
            progress.round(record, config.num_server_rounds)
            raise RunFailed(f"{stopped}; the rounds so far are in {recorder.run_dir / METRICS}")
        if server_round % config.checkpoint_every == 0 or server_round == config.num_server_rounds:
            strategy_state = strategy.state_dict() if hasattr(strategy, "state_dict") else {}
            recorder.save_checkpoint(server_round, _detached(model), strategy_state)
        progress.round(record, config.num_server_rounds)

    summary = build_summary(recorder.rounds, workload.headline_metric(), plan)
    recorder.finish(_detached(model), summary)
    return summary


class RunHealth:
    """Whether a run can go on: it fails once more than ``max_failed_share`` of its client-rounds
    so far (a resumed run's earlier rounds included) failed, that is were sampled but not
    aggregated (an error, no reply, or an update dropped as malformed)."""

    def __init__(self, max_failed_share: float, earlier_rounds: list[dict[str, Any]]) -> None:
        self.max_failed_share = max_failed_share
        self.sampled = sum(len(record.get("clients", [])) for record in earlier_rounds)
        self.failed = sum(len(record.get("failures", [])) for record in earlier_rounds)

    def after_round(self, server_round: int, sampled: int, aggregated: int) -> str:
        """Count the round; return why the run must stop ("" if it can go on)."""
        self.sampled += sampled
        self.failed += sampled - aggregated
        if self.sampled and self.failed / self.sampled > self.max_failed_share:
            return (
                f"round {server_round}: {self.failed} of {self.sampled} client-rounds so far failed, more than"
                f" max-failed-share = {self.max_failed_share} (see 'failures' in each round)"
            )
        return ""


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    """Whether every floating tensor of a model state is free of NaN and Inf."""
    return all(bool(torch.isfinite(value).all()) for value in state.values() if torch.is_floating_point(value))


def attackers_local_asr(replies: list[Message]) -> dict[str, dict[str, float]]:
    """Partition id -> backdoor -> the ASR of that attacker's trained model on its own data,
    from the attack reports of the aggregated replies (``client_app.local_backdoor_report``)."""
    local: dict[str, dict[str, float]] = {}
    for reply in replies:
        rates = messages.attack_report_of(reply)
        if rates:
            local[str(messages.reply_partition_id(reply))] = rates
    return local


def _rounded_to_integer_buffers(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the entries that are integers in ``model`` rounded to the nearest integer."""
    own = model.state_dict()
    return {
        key: value.round() if key in own and not torch.is_floating_point(own[key]) and torch.is_floating_point(value) else value
        for key, value in state.items()
    }


def _detached(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _update_norms(replies: list[Message], global_arrays: ArrayRecord) -> dict[str, float]:
    """Each sanitized reply's update L2 norm by partition id (what norm-bounding defences are tuned to)."""
    return {
        str(messages.reply_partition_id(reply)): update_norm(next(iter(reply.content.array_records.values())), global_arrays)
        for reply in replies
    }


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def failure_reason(text: str, limit: int = 500) -> str:
    """A client's error as recorded: colour codes removed; a long one (a remote traceback) keeps its
    start and its end, where the exception that ended it is."""
    text = ANSI_ESCAPE.sub("", text).strip()
    if len(text) <= limit:
        return text
    return f"{text[: limit // 3]} [...] {text[-(limit - limit // 3):]}"


def _split_failures(
    replies: Iterable[Message], partition_of: dict[int, int], addressed: dict[str, int]
) -> tuple[list[Message], list[dict]]:
    """Replies with content, and a failure entry (partition id, reason) for each error reply."""
    ok, failures = [], []
    for reply in replies:
        if reply.has_error():
            metadata = reply.metadata
            partition_id = partition_of.get(metadata.src_node_id, addressed.get(metadata.reply_to_message_id, -1))
            failures.append({"partition_id": partition_id, "reason": failure_reason(str(reply.error.reason))})
        else:
            ok.append(reply)
    return ok, failures
