"""One place that builds a run from its validated config: the workload, the attack plan and
the strategy.

The ServerApp builds all three; every ClientApp process builds the workload and the plan
(the same plan: it is a pure function of the config); ``flowerbed bench`` builds all three
for every cell before any cell runs, so that every check a part makes (a trigger's
parameters, a defence's bounds, a missing data file) fails before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowerbed.platform.config import ConfigError, RunConfig
from flowerbed.platform.registry import STRATEGIES, WORKLOADS
from flowerbed.platform.roles import AttackPlan, build_attack_plan
from flowerbed.platform.workload import Workload


@dataclass
class RunParts:
    """What a run is made of. ``strategy`` is None where it was not asked for (clients)."""

    config: RunConfig
    workload: Workload
    plan: AttackPlan
    strategy: Any | None = None


def build_run(config: RunConfig, with_strategy: bool = True) -> RunParts:
    """The run ``config`` describes; raise :class:`ConfigError` naming the key on bad input.

    The plan's backdoors are handed to the workload, which measures them every round.
    """
    plan = build_attack_plan(config)
    workload = build_workload(config)
    workload.backdoors = plan.backdoors()
    strategy = build_strategy(config, workload) if with_strategy else None
    return RunParts(config, workload, plan, strategy)


def build_workload(config: RunConfig) -> Workload:
    """The configured workload with its validated parameters (loads its data)."""
    workload_cls = WORKLOADS.get(config.workload.name)
    return workload_cls(config, config.plugin_params("workload", config.workload.name))


def build_strategy(config: RunConfig, workload: Workload) -> Any:
    """The configured strategy; flowerbed samples clients itself, so it addresses every node it is given."""
    factory = STRATEGIES.get(config.strategy.name)
    params = config.plugin_params("strategy", config.strategy.name)
    try:
        strategy = factory(
            params,
            fraction_train=1.0,
            num_clients_per_round=config.clients_per_round(),
            seed=config.seed,
            root_data=workload.server_model_hooks(),
        )
    except ValueError as error:
        raise ConfigError([f"strategy '{config.strategy.name}': {error}"]) from None
    for attribute, value in (("min_train_nodes", 1), ("min_available_nodes", 1), ("fraction_evaluate", 0.0), ("min_evaluate_nodes", 0)):
        target = getattr(strategy, "strategy", strategy)  # DP wrappers keep the inner one in .strategy
        for obj in {id(strategy): strategy, id(target): target}.values():
            if hasattr(obj, attribute):
                setattr(obj, attribute, value)
    return strategy
