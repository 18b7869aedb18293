"""What every registered flowerbed strategy adds to Flower's: validated Params, a seed, detection reports.

A registered class is built by the ServerApp as
``Class(params, *, fraction_train, num_clients_per_round, seed, root_data=None)``:
``params`` is the class's ``Params`` (or a mapping of its run-config keys, or
None for the paper's defaults), ``root_data`` a :class:`ServerModelHooks`
for the defences that need the model itself (FLTrust, DeepSight).

That constructor is :meth:`FlowerbedStrategy.__init__`, shared by every strategy.
A class states only what is its own, in hooks the constructor calls in this order:

1. :meth:`~FlowerbedStrategy.check_root_data` (a class method): reject missing server-side hooks;
2. :meth:`~FlowerbedStrategy.check_params` (a class method): reject impossible Params;
3. :meth:`~FlowerbedStrategy.init_flower`: call the Flower strategy's ``__init__`` with the class's arguments;
4. :meth:`~FlowerbedStrategy.init_state`: set up what the strategy keeps besides its Params.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from flowerbed.platform.server_model import ServerModelHooks

from .detection import PARTITION_ID_KEY, DetectionReport
from .params import StrategyParams, param_error, parse_params


class FlowerbedStrategy(DetectionReport):
    """Mixin for Flower strategies registered in ``STRATEGIES``; list it before the Flower class.

    ``class Krum(ReportsKrumSelection, FlowerbedStrategy, flwr_strategy.Krum)``: other mixins
    first, then this one, then Flower's strategy, so this ``__init__`` is the one that runs.
    """

    name: ClassVar[str]
    Params: ClassVar[type[StrategyParams]] = StrategyParams

    params: StrategyParams
    num_clients_per_round: int
    seed: int
    root_data: ServerModelHooks | None

    def __init__(
        self,
        params: StrategyParams | Mapping[str, Any] | None = None,
        *,
        fraction_train: float = 1.0,
        num_clients_per_round: int,
        seed: int = 0,
        root_data: ServerModelHooks | None = None,
    ) -> None:
        """Validate and store the Params, build the Flower strategy, then the class's own state.

        Raises ValueError naming the run-config key (``strategy.<name>.<param>``) on bad input.
        """
        self.check_root_data(root_data)
        parsed = self.init_flowerbed(params, num_clients_per_round, seed)
        # Flower's __init__ runs here, called by the class (not through super()), with its own arguments.
        self.init_flower(parsed, flower_kwargs(fraction_train, num_clients_per_round))
        self.root_data = root_data
        self.init_state()

    @classmethod
    def check_root_data(cls, root_data: ServerModelHooks | None) -> None:
        """Reject ``root_data`` the strategy cannot work without (override where needed; runs first)."""

    def init_flower(self, params: Any, flower_kwargs: dict[str, Any]) -> None:
        """Call the Flower strategy's ``__init__`` with ``flower_kwargs`` (see :func:`flower_kwargs`)
        and the class's own arguments, taken from the validated ``params``."""
        raise NotImplementedError(
            f"{type(self).__name__}: define init_flower(self, params, flower_kwargs) calling the Flower"
            " strategy's __init__, or subclass UpdateDefence"
        )

    def init_state(self) -> None:
        """Set up what the strategy keeps besides its Params (round-to-round memory, hooks taken
        from ``self.root_data``); runs last. Overrides call ``super().init_state()`` first."""

    @classmethod
    def validate_params(
        cls, params: StrategyParams | Mapping[str, Any] | None, num_clients_per_round: int
    ) -> StrategyParams:
        """Parse ``params`` and check them against the number of clients per round.

        Raises ValueError naming the run-config key (``strategy.<name>.<param>``).
        """
        if num_clients_per_round < 1:
            raise ValueError(f"strategy.{cls.name}: num_clients_per_round must be >= 1, got {num_clients_per_round}")
        parsed = parse_params(cls.name, cls.Params, params)
        cls.check_params(parsed, num_clients_per_round)
        return parsed

    @classmethod
    def check_params(cls, params: Any, num_clients_per_round: int) -> None:
        """Reject values impossible with ``num_clients_per_round`` clients (override where needed)."""

    @classmethod
    def param_error(cls, field: str, message: str) -> ValueError:
        """A ValueError naming ``strategy.<name>.<alias of field>``."""
        return param_error(cls.name, cls.Params, field, message)

    def state_dict(self) -> dict[str, Any]:
        """What this defence carries from round to round (tensors), saved in each checkpoint so a
        resumed run aggregates as an uninterrupted one would. Stateless rules keep the default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` from a checkpoint (before the first resumed round)."""

    def init_flowerbed(self, params: Any, num_clients_per_round: int, seed: int) -> Any:
        """Validate and store params, the client count and the seed; returns the parsed Params."""
        self.params = self.validate_params(params, num_clients_per_round)
        self.num_clients_per_round = num_clients_per_round
        self.seed = seed
        self.clear_detection()
        return self.params

    def round_generator(self, server_round: int, *stream: int) -> torch.Generator:
        """A torch generator derived from (run seed, round, *stream), so server-side randomness is reproducible."""
        state = np.random.SeedSequence([self.seed, server_round, *stream]).generate_state(1, dtype=np.uint64)[0]
        return torch.Generator().manual_seed(int(state))


def aggregate_train_metrics(records: list[RecordDict], weighting_metric_name: str) -> MetricRecord:
    """Flower's weighted average of the clients' train metrics, without the partition ids."""
    metrics = aggregate_metricrecords(records, weighting_metric_name)
    metrics.pop(PARTITION_ID_KEY, None)
    return metrics


def flower_kwargs(fraction_train: float, num_clients_per_round: int) -> dict[str, Any]:
    """Keyword arguments for Flower's FedAvg family: sample ``num_clients_per_round`` clients per round."""
    return {
        "fraction_train": fraction_train,
        "min_train_nodes": num_clients_per_round,
        "min_available_nodes": num_clients_per_round,
        "train_metrics_aggr_fn": aggregate_train_metrics,
    }


class FlagsNobody:
    """Mixin for rules that exclude no client as a whole (mean, median, trimmed mean, DP clipping).

    Runs the parent Flower strategy's ``aggregate_train`` and reports every
    replying client as accepted (nobody when the parent aggregated nothing).
    """

    flags_clients = False

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is None:
            self.clear_detection()  # type: ignore[attr-defined]
        else:
            self.record_all_accepted([reply.content for reply in replies if not reply.has_error()])  # type: ignore[attr-defined]
        return arrays, metrics
