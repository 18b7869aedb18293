"""The run config: one pydantic model over Flower's flat run-config keys.

Flower hands an app a flat mapping with dotted keys (``data.name``,
``partition.alpha``, ``strategy.krum.num-malicious``). :func:`parse_run_config`
turns it into a validated, typed :class:`RunConfig`; :meth:`RunConfig.to_flat`
goes back. Every key has a default here, and ``pyproject.toml``'s
``[tool.flwr.app.config]`` mirrors :func:`default_flat_config` (a test keeps the
two in sync: ``flowerbed config --pyproject`` prints the block).

Plugins (strategies, attacks, triggers, workloads) declare their own
hyper-parameters as a pydantic ``Params`` model; their keys are
``<kind>.<plugin-name>.<param>`` and are validated against that model
(:mod:`~flowerbed.platform.plugin_params`). The attack keys' checks, which need
the attack domain (per-attacker lists, windows, targets), are in
:mod:`~flowerbed.platform.roles`, beside the plan they describe.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError

from flowerbed.platform import roles
from flowerbed.platform.errors import ConfigError, describe_error
from flowerbed.platform.plugin_params import (
    PLUGIN_KINDS,
    params_model,
    params_of,
    plugin_key,
    plugin_table_problems,
    registered_defaults,
)
from flowerbed.platform.registry import (
    ATTACKS,
    DATASETS,
    MODELS,
    PARTITIONERS,
    STRATEGIES,
    TRIGGERS,
    WORKLOADS,
    RegistryError,
    import_user_module,
)

__all__ = ["ConfigError", "RunConfig", "parse_run_config"]  # ConfigError: imported from here by most callers


def _split_list(value: Any) -> Any:
    """Accept ``"0,1,2"``, ``0``, ``[0, 1]``; return a tuple of stripped items."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return (value,)


def _join_list(value: tuple) -> str:
    return ",".join(str(item) for item in value)


# A per-attacker list written as a comma-separated string in the flat config.
CommaList = Annotated[tuple[str, ...], BeforeValidator(_split_list), PlainSerializer(_join_list)]
IntList = Annotated[tuple[int, ...], BeforeValidator(_split_list), PlainSerializer(_join_list)]
FloatList = Annotated[tuple[float, ...], BeforeValidator(_split_list), PlainSerializer(_join_list)]


# Bounds far beyond any run this testbed makes, so that a mistyped number is an error naming
# its key rather than hours of work or memory exhausted (per-attacker lists, a digits build).
MAX_CLIENTS = 1_000_000
MAX_ROUNDS = 1_000_000
MAX_IMAGES = 1_000_000


class Section(BaseModel):
    """A strict config section: unknown keys, wrong types and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


class DataConfig(Section):
    name: str = Field("digits-rgb32", description="dataset name (see `flowerbed list`)")
    root: str = Field("", description="folder holding a real dataset's files (torchvision layout)")
    train_size: int = Field(20000, alias="train-size", ge=100, le=MAX_IMAGES, description="digits-rgb32: training images")
    test_size: int = Field(2000, alias="test-size", ge=20, le=MAX_IMAGES, description="digits-rgb32: test images")
    server_size: int = Field(
        100, alias="server-size", ge=0, description="training images the server keeps as root data (FLTrust); no client gets them"
    )
    seed: int = Field(0, description="seed of the dataset build (independent of the run seed)")
    cache_dir: str = Field("", alias="cache-dir", description="where built datasets are cached")


class PartitionConfig(Section):
    name: str = Field("dirichlet", description="iid | dirichlet | pathological (flwr-datasets partitioners)")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration")
    classes_per_client: int = Field(2, alias="classes-per-client", ge=1, description="pathological")
    min_size: int = Field(10, alias="min-size", ge=0, description="Dirichlet: resample until every client has this many")


class ModelConfig(Section):
    name: str = Field("cnn", description="model name (see `flowerbed list`)")
    init: str = Field(
        "", description="start from these weights: a state-dict file or a finished run folder (its model.pt); '' = fresh"
    )


class BackendConfig(Section):
    """Where simulated clients run: Flower's Ray backend (README, "Ray at scale")."""

    client_cpus: float = Field(1.0, alias="client-cpus", gt=0, le=1024, description="CPUs each virtual client (Ray actor) takes")
    client_gpus: float = Field(0.0, alias="client-gpus", ge=0, le=64, description="GPUs each virtual client takes (fractions share one)")
    ray_address: str = Field(
        "",
        alias="ray-address",
        description="'' = a private Ray on this machine; 'auto' = Ray's own discovery (RAY_ADDRESS, then the"
        " latest `ray start` cluster on this host); 'host:port' = attach to that Ray cluster",
    )


class PluginSection(BaseModel):
    """A section plus per-plugin parameter tables (``<kind>.<plugin>.<param>``).

    Declared fields are strict; any other key must be a table named after a
    registered plugin (checked in :func:`parse_run_config`).
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True, allow_inf_nan=False)

    def options(self) -> dict[str, dict[str, Any]]:
        return dict(self.__pydantic_extra__ or {})


class AttackConfig(PluginSection):
    """Who attacks, with what, when. Per-attacker keys take one value for all or one per attacker."""

    name: CommaList = Field(("none",), description="attack per attacker: registered name or 'module:Class'")
    num_attackers: int = Field(0, alias="num-attackers", ge=0, le=MAX_CLIENTS)
    attacker_ids: IntList = Field((), alias="attacker-ids", description="partition ids of the attackers; empty = seeded choice")
    targets: IntList = Field((0,), description="target class per attacker")
    trigger: CommaList = Field((), description="trigger per attacker; empty = each attack's default")
    poison_fraction: FloatList = Field(
        (0.5,),
        alias="poison-fraction",
        description="share of each batch poisoned; 0 = a control attacker that trains like one but plants nothing",
    )
    start_round: IntList = Field((1,), alias="start-round", description="first attack round per attacker")
    end_round: IntList = Field((0,), alias="end-round", description="last attack round per attacker; 0 = last round")
    every: IntList = Field((1,), description="attack every k-th round inside the window")
    participation: Literal["sampled", "forced"] = Field(
        "forced", description="sampled: attackers sampled like everyone; forced: active attackers join every attack round"
    )


class StrategyConfig(PluginSection):
    name: str = Field("fedavg", description="aggregation rule / defence (see `flowerbed list`)")


class WorkloadConfig(PluginSection):
    name: str = Field("image-classification", description="what clients train (see `flowerbed list`)")


class RunConfig(Section):
    """The whole validated run configuration."""

    experiment: str = Field("default", description="run folder prefix")
    output_dir: str = Field("runs", alias="output-dir", description="parent folder of run folders")
    resume: str = Field("", description="run folder to resume from its last checkpoint")
    seed: int = Field(0, description="derives every client's and the server's generators")
    num_server_rounds: int = Field(20, alias="num-server-rounds", ge=1, le=MAX_ROUNDS)
    num_clients: int = Field(10, alias="num-clients", ge=1, le=MAX_CLIENTS, description="simulated clients (supernodes)")
    fraction_train: float = Field(0.5, alias="fraction-train", gt=0, le=1)
    min_clients: int = Field(2, alias="min-clients", ge=1, description="at least this many clients per round")
    local_epochs: int = Field(1, alias="local-epochs", ge=1)
    lr: float = Field(0.02, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, alias="weight-decay", ge=0)
    batch_size: int = Field(32, alias="batch-size", ge=1)
    checkpoint_every: int = Field(1, alias="checkpoint-every", ge=1)
    max_failed_share: float = Field(
        0.5,
        alias="max-failed-share",
        ge=0,
        le=1,
        description="stop the run, failing, once more than this share of its client-rounds so far failed"
        " (an error, no reply, or an update dropped as malformed)",
    )
    min_replies: int = Field(
        1,
        alias="min-replies",
        ge=1,
        description="aggregate a round only when at least this many clients' updates arrived and passed;"
        " below it the global model stays as it was (the round is recorded)",
    )
    round_timeout: float = Field(
        3600.0,
        alias="round-timeout",
        gt=0,
        le=1e6,
        description="seconds the server waits for a round's replies; a client still busy then is a failure",
    )
    plugins: CommaList = Field(
        (),
        description="your modules to import first: they register attacks, triggers, strategies or workloads by name",
    )
    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    model: ModelConfig = ModelConfig()
    backend: BackendConfig = BackendConfig()
    workload: WorkloadConfig = WorkloadConfig()
    strategy: StrategyConfig = StrategyConfig()
    attack: AttackConfig = AttackConfig()
    trigger: PluginSection = PluginSection()

    # ----------------------------------------------------------------- helpers
    def clients_per_round(self) -> int:
        """How many clients train each round (Flower's rule: fraction, at least the minimum)."""
        return min(self.num_clients, max(self.min_clients, int(self.num_clients * self.fraction_train)))

    def plugin_params(self, kind: str, name: str) -> BaseModel:
        """The validated ``Params`` of plugin ``name`` of ``kind`` (strategy/attack/trigger/workload),
        read from the keys ``<kind>.<plugin_key(name)>.*``."""
        return params_of(self, kind, name)

    def selected_plugins(self, kind: str) -> list[str]:
        """The names (registered or ``module:Class``) of the plugins of ``kind`` this run uses."""
        if kind == "attack":
            return list(self.attack.name) if self.attack.num_attackers else []
        if kind == "trigger":
            return list(self.attack.trigger) if self.attack.num_attackers else []
        return [getattr(self, kind).name]

    def to_flat(self) -> dict[str, Any]:
        """Flat dotted keys, the form Flower's run config uses (lists as comma strings)."""
        return flatten(self.model_dump(by_alias=True))

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")

    def plugins_in_use(self, kind: str) -> list[str]:
        """Like :meth:`selected_plugins`, with each attacker's trigger resolved to its attack's
        default where ``attack.trigger`` leaves it empty (distinct names, in attacker order)."""
        if kind != "trigger":
            return list(dict.fromkeys(self.selected_plugins(kind)))
        return list(dict.fromkeys(t for t in roles.attacker_triggers(self) if t))

    def resolved_json_dict(self) -> dict[str, Any]:
        """:meth:`to_json_dict` with every parameter of the plugins this run uses written out,
        defaults included, so that a run folder's ``config.json`` still says what ran after a
        later version changes a default (resume and ``flowerbed bench`` compare against it)."""
        data = self.to_json_dict()
        for kind, registry in PLUGIN_KINDS.items():
            for name in self.plugins_in_use(kind):
                params = self.plugin_params(kind, name).model_dump(by_alias=True, mode="json")
                if params:
                    data.setdefault(kind, {}).setdefault(plugin_key(name, registry.get(name)), {}).update(params)
        return data


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def config_differences(saved: dict[str, Any], current: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """The dotted keys whose values differ between two ``config.json`` contents.

    A key that one side lacks counts as its current default there (a plugin parameter: its
    ``Params`` default): a config saved before a key existed ran as that key's default does,
    since keys are only ever added with a default that keeps the old behaviour. So upgrading
    flowerbed does not strand finished bench cells or runs to resume. A changed *default* is
    caught when both sides write their plugins' parameters out
    (:meth:`RunConfig.resolved_json_dict`, what run folders save).
    """
    saved, current = flatten(saved), flatten(current)
    defaults = flatten(RunConfig().to_json_dict())
    skipped = set(ignore)
    missing = object()

    def value(config: dict[str, Any], key: str) -> Any:
        if key in config:
            return config[key]
        return defaults[key] if key in defaults else _plugin_default(key, missing)

    return sorted(k for k in set(saved) | set(current) if k not in skipped and value(saved, k) != value(current, k))


def _plugin_default(key: str, missing: Any) -> Any:
    """The default of plugin parameter ``<kind>.<plugin>.<param>``, or ``missing`` if unknown."""
    kind, _, rest = key.partition(".")
    plugin, _, param = rest.partition(".")
    if kind not in PLUGIN_KINDS or not param:
        return missing
    try:
        params = params_model(PLUGIN_KINDS[kind].get(plugin))()
    except Exception:  # noqa: BLE001 - an unknown plugin or one whose parameters have no defaults
        return missing
    return flatten(params.model_dump(by_alias=True, mode="json")).get(param, missing)


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError([f"key '{key}': '{'.'.join(parts[:-1])}' is a value, not a section"])
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError([f"key '{key}': it is a section, give one of its keys instead"])
        node[parts[-1]] = value
    return nested


def parse_run_config(flat: dict[str, Any]) -> RunConfig:
    """Validate Flower's flat run config (missing keys take their defaults).

    The modules listed in ``plugins`` are imported first, so that the attacks, triggers,
    strategies and workloads they register are known to every check.
    """
    for module in _split_list(flat.get("plugins", ())):
        try:
            import_user_module(str(module), f"key 'plugins': plugin module '{module}'")
        except RegistryError as error:
            raise ConfigError([str(error)]) from None
    nested = unflatten(dict(flat))
    try:
        config = RunConfig.model_validate(nested)
    except ValidationError as error:
        raise ConfigError([describe_error(e) for e in error.errors()]) from None
    problems = _check_names(config)
    problems += plugin_table_problems(config)
    problems += _check_consistency(config)
    if problems:
        raise ConfigError(problems)
    return config


def _check_names(config: RunConfig) -> list[str]:
    problems = []
    for key, registry, name in (
        ("data.name", DATASETS, config.data.name),
        ("model.name", MODELS, config.model.name),
        ("partition.name", PARTITIONERS, config.partition.name),
        ("strategy.name", STRATEGIES, config.strategy.name),
        ("workload.name", WORKLOADS, config.workload.name),
    ):
        try:
            registry.get(name)
        except RegistryError as error:
            problems.append(f"key '{key}': {error}")
    if config.attack.num_attackers:
        for name in set(config.attack.name):
            try:
                ATTACKS.get(name)
            except RegistryError as error:
                problems.append(f"key 'attack.name': {error}")
        for name in set(config.attack.trigger):
            try:
                TRIGGERS.get(name)
            except RegistryError as error:
                problems.append(f"key 'attack.trigger': {error}")
    return problems


def _check_workload(config: RunConfig) -> list[str]:
    """The selected workload's own cross-key checks, and whether it can be attacked at all."""
    try:
        workload = WORKLOADS.get(config.workload.name)
        params = config.plugin_params("workload", config.workload.name)
    except (RegistryError, ValidationError):
        return []  # already reported by _check_names / plugin_table_problems
    problems = []
    if config.attack.num_attackers and not workload.supports_attacks:
        problems.append(
            f"key 'attack.num-attackers': {config.attack.num_attackers} attackers, but workload "
            f"'{config.workload.name}' cannot be attacked (attacks poison image-classification training); "
            "set attack.num-attackers = 0"
        )
    return problems + list(workload.check_config(config, params))


def _check_consistency(config: RunConfig) -> list[str]:
    problems = []
    if config.min_clients > config.num_clients:
        problems.append(f"key 'min-clients': {config.min_clients} is more than num-clients={config.num_clients}")
    if config.min_replies > config.clients_per_round():
        problems.append(
            f"key 'min-replies': {config.min_replies} is more than the {config.clients_per_round()} clients sampled"
            " per round (num-clients x fraction-train, at least min-clients): no round could aggregate"
        )
    problems += _check_workload(config)
    try:
        attackable = WORKLOADS.get(config.workload.name).supports_attacks
    except RegistryError:
        attackable = True  # an unknown workload is reported by _check_names; check the attack keys anyway
    if attackable:  # a workload that cannot be attacked has had its one attack problem reported
        problems += roles.attack_key_problems(config)
    return problems


def default_flat_config() -> dict[str, Any]:
    """Every key with its default, including every registered plugin's parameters."""
    return {**RunConfig().to_flat(), **registered_defaults()}
