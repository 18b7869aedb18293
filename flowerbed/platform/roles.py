"""Client roles: which partition ids attack, with which attack, trigger, target and schedule.

Everything about the ``attack.*`` keys is here: reading the per-attacker lists, checking
them (:func:`attack_key_problems`, called by ``parse_run_config``), and building the plan
(:func:`build_attack_plan`, whose checks need the built attacks and triggers). The plan is
a pure function of the run config (and its seed), so the server and every client build the
same one independently. Its ground truth is written to the run folder as ``attackers.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from flowerbed.platform.errors import ConfigError
from flowerbed.platform.registry import ATTACKS, DATASETS, TRIGGERS, RegistryError
from flowerbed.platform.seeding import derive_seed

if TYPE_CHECKING:
    from flowerbed.platform.config import RunConfig


def per_attacker(values: tuple, count: int, default: Any = None) -> list:
    """Broadcast a per-attacker list: one value for all, or one each."""
    if len(values) == 0:
        return [default] * count
    if len(values) == 1:
        return list(values) * count
    return list(values)


def attacker_triggers(config: RunConfig) -> list[str]:
    """Each attacker's trigger: ``attack.trigger``'s, else its attack's default ("" if it has none)."""
    count = config.attack.num_attackers
    names = per_attacker(config.attack.name, count)
    triggers = per_attacker(config.attack.trigger, count, default="")
    return [trigger or getattr(ATTACKS.get(name), "default_trigger", "") for name, trigger in zip(names, triggers)]


def attack_end_rounds(config: RunConfig) -> list[int]:
    """Each attacker's last attack round, with ``attack.end-round = 0`` resolved to the last round."""
    count = config.attack.num_attackers
    return [end or config.num_server_rounds for end in per_attacker(config.attack.end_round, count)]


def attack_key_problems(config: RunConfig) -> list[str]:
    """Every problem with the ``attack.*`` keys that the keys alone show, each naming its key."""
    problems: list[str] = []
    attack = config.attack
    count = attack.num_attackers
    try:
        num_classes = getattr(DATASETS.get(config.data.name), "num_classes", None)
    except RegistryError:
        num_classes = None  # an unknown dataset is reported with the other names
    # Checked with or without attackers: a target outside the label set is wrong either way.
    if num_classes is not None and any(t < 0 or t >= num_classes for t in attack.targets):
        problems.append(f"key 'attack.targets': {attack.targets} outside the label set 0..{num_classes - 1}")
    if count == 0:
        return problems
    if count > config.num_clients:  # and stop: the checks below build one entry per attacker
        return problems + [f"key 'attack.num-attackers': {count} attackers but only num-clients={config.num_clients}"]
    if attack.name == ("none",):
        problems.append("key 'attack.name': num-attackers > 0 needs an attack name (see `flowerbed list`)")
    lengths = []
    for key in ("name", "targets", "trigger", "poison_fraction", "start_round", "end_round", "every"):
        values = getattr(attack, key)
        if len(values) not in (0, 1, count) or (key != "trigger" and len(values) == 0):
            alias = type(attack).model_fields[key].alias or key
            lengths.append(f"key 'attack.{alias}': give one value or one per attacker ({count}), got {len(values)}")
    if lengths:
        return problems + lengths  # the checks below read one value per attacker
    if attack.attacker_ids:
        ids = attack.attacker_ids
        if len(ids) != count:
            problems.append(f"key 'attack.attacker-ids': {len(ids)} ids for num-attackers={count}")
        if len(set(ids)) != len(ids):
            problems.append("key 'attack.attacker-ids': ids repeat")
        if any(i < 0 or i >= config.num_clients for i in ids):
            problems.append(f"key 'attack.attacker-ids': ids must be in 0..{config.num_clients - 1}")
    for fraction in attack.poison_fraction:
        if not 0 <= fraction <= 1:
            problems.append(f"key 'attack.poison-fraction': {fraction} is not in [0, 1]")
    if attack.poison_fraction and max(attack.poison_fraction) == 0:
        problems.append("key 'attack.poison-fraction': every attacker poisons 0% (0 is for a control attacker beside others)")
    rounds = config.num_server_rounds
    for start, end in zip(per_attacker(attack.start_round, count), per_attacker(attack.end_round, count)):
        end = end or rounds
        if not 1 <= start <= end:
            problems.append(f"keys 'attack.start-round'/'attack.end-round': window [{start}, {end}] is empty")
        elif start > rounds:
            problems.append(f"key 'attack.start-round': {start} is after the last round ({rounds})")
    if any(k < 1 for k in attack.every):
        problems.append("key 'attack.every': must be >= 1")
    return problems


@dataclass(frozen=True)
class Schedule:
    """Attack in rounds ``start..end`` (inclusive), every ``every``-th round of that window."""

    start: int
    end: int
    every: int = 1

    def is_active(self, server_round: int) -> bool:
        return self.start <= server_round <= self.end and (server_round - self.start) % self.every == 0

    def last_round(self) -> int:
        return self.start + (self.end - self.start) // self.every * self.every


@dataclass
class Attacker:
    """One attacking client: its attack object and when it acts."""

    index: int
    partition_id: int
    attack: Any
    schedule: Schedule
    attack_name: str
    trigger_name: str
    # Backdoors this attacker implants jointly with others (the assembled DBA trigger).
    combined: list[Any] = field(default_factory=list)

    @property
    def backdoors(self) -> list[Any]:
        """What the server measures for this attacker: the combined backdoors, then its attack's own."""
        return [*self.combined, *self.attack.backdoors]

    def describe(self) -> dict[str, Any]:
        """This attacker's entry in ``attackers.json``."""
        return {
            "attacker": self.index,
            "partition_id": self.partition_id,
            "attack": self.attack_name,
            "params": self.attack.params.model_dump(by_alias=True),
            "trigger": self.trigger_name,
            "trigger_details": self.attack.backdoor.trigger.describe(),
            "target": self.attack.backdoor.target,
            "source_classes": list(self.attack.backdoor.source_classes),  # [] = every class but the target
            "backdoors": [backdoor.name for backdoor in self.backdoors],
            "poison_fraction": self.attack.poison_fraction,
            "train_overrides": self.attack.train_overrides(),
            "schedule": {"start": self.schedule.start, "end": self.schedule.end, "every": self.schedule.every},
        }


@dataclass
class AttackPlan:
    attackers: list[Attacker] = field(default_factory=list)
    participation: str = "forced"

    def attacker_for(self, partition_id: int) -> Attacker | None:
        for attacker in self.attackers:
            if attacker.partition_id == partition_id:
                return attacker
        return None

    @property
    def attacker_ids(self) -> list[int]:
        return [attacker.partition_id for attacker in self.attackers]

    def active_ids(self, server_round: int) -> list[int]:
        return [a.partition_id for a in self.attackers if a.schedule.is_active(server_round)]

    def backdoors(self) -> list[Any]:
        """Every backdoor to measure, once each, in attacker order."""
        seen: dict[str, Any] = {}
        for attacker in self.attackers:
            for backdoor in attacker.backdoors:
                seen.setdefault(backdoor.name, backdoor)
        return list(seen.values())

    def attackers_of(self, backdoor_name: str) -> list[int]:
        """Partition ids of the attackers that implant ``backdoor_name``."""
        return [a.partition_id for a in self.attackers if backdoor_name in [b.name for b in a.backdoors]]

    def schedule_of(self, backdoor_name: str) -> Schedule | None:
        """The combined attack window of the attackers that implant ``backdoor_name``."""
        windows = [a.schedule for a in self.attackers if backdoor_name in [b.name for b in a.backdoors]]
        if not windows:
            return None
        return Schedule(min(w.start for w in windows), max(w.last_round() for w in windows))

    def describe(self) -> dict[str, Any]:
        return {
            "participation": self.participation,
            "attackers": {str(a.partition_id): a.describe() for a in self.attackers},
        }


def build_attack_plan(config: RunConfig) -> AttackPlan:
    """Assign attacker roles from the config; raise :class:`ConfigError` naming the key on bad input."""
    attack = config.attack
    count = attack.num_attackers
    if count == 0:
        return AttackPlan(participation=attack.participation)
    if attack.attacker_ids:
        ids = list(attack.attacker_ids)
    else:
        rng = np.random.default_rng(derive_seed(config.seed, "attacker-ids"))
        ids = sorted(rng.choice(config.num_clients, size=count, replace=False).tolist())
    names = per_attacker(attack.name, count)
    targets = per_attacker(attack.targets, count)
    fractions = per_attacker(attack.poison_fraction, count)
    starts = per_attacker(attack.start_round, count)
    ends = attack_end_rounds(config)
    everys = per_attacker(attack.every, count)
    attack_classes = [ATTACKS.get(name) for name in names]
    triggers = attacker_triggers(config)
    for name, trigger in zip(names, triggers):
        if not trigger:
            raise ConfigError([f"key 'attack.trigger': attack '{name}' has no default trigger; name one"])
    dataset = DATASETS.get(config.data.name)
    image_shape = tuple(dataset.image_shape)

    combined = _combined_backdoors(config, triggers, targets, image_shape)
    backdoors = []
    for k in range(count):
        same_kind = [j for j in range(count) if triggers[j] == triggers[k]]
        trigger = _build_trigger(config, triggers[k], same_kind.index(k), len(same_kind), image_shape)
        part_of = combined[triggers[k]].name if triggers[k] in combined else ""
        backdoors.append(_backdoor(f"{names[k].rsplit(':', 1)[-1].lower()}-{k}", trigger, targets[k], part_of))

    attackers = []
    for k in range(count):
        params = _plugin_params(config, "attack", names[k])
        colluders = [backdoors[j] for j in range(count) if j != k]
        try:
            attack_object = attack_classes[k](
                params, backdoor=backdoors[k], colluders=colluders, poison_fraction=fractions[k]
            )
        except ValueError as error:
            raise ConfigError([f"attack '{names[k]}' (attacker {k}): {error}"]) from None
        schedule = Schedule(starts[k], ends[k], everys[k])
        for backdoor in attack_object.backdoors:
            outside = [c for c in backdoor.source_classes if c >= dataset.num_classes]
            if outside:
                message = (
                    f"attack '{names[k]}' (attacker {k}): backdoor '{backdoor.name}' has source classes {outside}"
                    f" that dataset '{config.data.name}' does not have (classes 0-{dataset.num_classes - 1})"
                )
                raise ConfigError([message])
        joint = [combined[triggers[k]]] if triggers[k] in combined else []
        attackers.append(Attacker(k, ids[k], attack_object, schedule, names[k], triggers[k], joint))
    plan = AttackPlan(attackers=attackers, participation=attack.participation)
    if attack.participation == "forced":
        size = config.clients_per_round()
        busiest = max(range(1, config.num_server_rounds + 1), key=lambda r: len(plan.active_ids(r)))
        if len(plan.active_ids(busiest)) > size:
            message = (
                f"key 'attack.num-attackers': with attack.participation = 'forced', {len(plan.active_ids(busiest))}"
                f" attackers are active in round {busiest}, more than the {size} clients a round trains"
                " (num-clients x fraction-train); lower the attackers or raise fraction-train"
            )
            raise ConfigError([message])
    return plan


def _plugin_params(config: RunConfig, kind: str, name: str):
    try:
        return config.plugin_params(kind, name)
    except ValueError as error:
        raise ConfigError([f"{kind} '{name}': {error}"]) from None


def _build_trigger(config: RunConfig, name: str, index: int, count: int, image_shape: tuple):
    cls = TRIGGERS.get(name)
    params = _plugin_params(config, "trigger", name)
    try:
        return cls(params, index=index, count=count, image_shape=image_shape, seed=derive_seed(config.seed, "trigger", name, index))
    except ValueError as error:
        raise ConfigError([f"trigger '{name}' (keys 'trigger.{name}.*'): {error}"]) from None


def _combined_backdoors(config: RunConfig, triggers: list[str], targets: list[int], image_shape: tuple) -> dict[str, Any]:
    """Per trigger kind shared by several attackers, its assembled trigger as one backdoor, if the kind
    has one (:meth:`Trigger.global_trigger`: DBA's global pattern, Xie et al., ICLR 2020).

    Its pieces' attackers must share one target: the global trigger has one.
    """
    combined = {}
    for kind in dict.fromkeys(triggers):
        members = [k for k, trigger in enumerate(triggers) if trigger == kind]
        if len(members) < 2:
            continue
        cls = TRIGGERS.get(kind)
        params = _plugin_params(config, "trigger", kind)
        try:
            trigger = cls.global_trigger(
                params, count=len(members), image_shape=image_shape, seed=derive_seed(config.seed, "trigger", kind, 0)
            )
        except ValueError as error:
            raise ConfigError([f"trigger '{kind}' (keys 'trigger.{kind}.*'): {error}"]) from None
        if trigger is None:
            continue
        member_targets = sorted({targets[k] for k in members})
        if len(member_targets) > 1:
            message = (
                f"key 'attack.targets': the {len(members)} attackers with trigger '{kind}' assemble one global"
                f" trigger, which needs one target class; got targets {member_targets}"
            )
            raise ConfigError([message])
        name = f"{kind.rsplit(':', 1)[-1].lower()}-global"
        combined[kind] = _backdoor(name, trigger, member_targets[0])
    return combined


def _backdoor(name: str, trigger: Any, target: int, part_of: str = ""):
    from flowerbed.clients.triggers.base import Backdoor  # the public trigger API

    return Backdoor(name=name, trigger=trigger, target=target, part_of=part_of)
