"""Split a model's parameters into modules, the unit of MGCM's conflict test.

MGCM (Liu et al., "A Modular-based Strategy for Mitigating Gradient Conflicts in
Simultaneous Speech Translation", arXiv:2409.15911) tests and resolves gradient
conflicts per module: every LayerNorm, every feed-forward (FFN) sub-layer and
every attention sub-layer, plus the embeddings and output layers. The
partition is derived from an ``nn.Module`` by a module-type rule, which the
caller can replace, or given explicitly as groups of parameter names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

# A module of one of these types is one MGCM module (all its parameters together).
DEFAULT_UNIT_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.MultiheadAttention,
    nn.Embedding,
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
)
# Attribute or class names that mark a feed-forward sub-layer (kept as one module).
FFN_NAMES = ("ffn", "feed_forward", "feedforward", "mlp")

UnitRule = Callable[[str, nn.Module], bool]


def default_unit_rule(name: str, module: nn.Module) -> bool:
    """LayerNorm / attention / embedding / linear / conv modules, and anything named like an FFN."""
    attribute = name.rsplit(".", 1)[-1].lower()
    return (
        isinstance(module, DEFAULT_UNIT_TYPES)
        or attribute in FFN_NAMES
        or type(module).__name__.lower() in FFN_NAMES
    )


@dataclass(frozen=True)
class ModuleGroup:
    """One module: a name and the names of its trainable parameters."""

    name: str
    parameter_names: tuple[str, ...]


class ModulePartition:
    """The trainable parameters of a model, in a fixed order, grouped into modules.

    ``parameters[i]`` belongs to module ``group_index[i]``; ``groups[g]`` lists its members.
    """

    def __init__(self, model: nn.Module, groups: Sequence[ModuleGroup]) -> None:
        named = {name: p for name, p in model.named_parameters() if p.requires_grad}
        seen: dict[str, str] = {}
        for group in groups:
            if not group.parameter_names:
                raise ValueError(f"module group '{group.name}' has no parameters")
            for pname in group.parameter_names:
                if pname not in named:
                    raise ValueError(f"module group '{group.name}': no trainable parameter named '{pname}'")
                if pname in seen:
                    raise ValueError(f"parameter '{pname}' is in both '{seen[pname]}' and '{group.name}'")
                seen[pname] = group.name
        missing = sorted(set(named) - set(seen))
        if missing:
            raise ValueError(f"parameters in no module group: {', '.join(missing)}")
        self.groups: tuple[ModuleGroup, ...] = tuple(groups)
        self.parameter_names: tuple[str, ...] = tuple(p for g in self.groups for p in g.parameter_names)
        self.parameters: list[nn.Parameter] = [named[p] for p in self.parameter_names]
        self.group_index = torch.tensor(
            [g for g, group in enumerate(self.groups) for _ in group.parameter_names], dtype=torch.long
        )
        # parameter index ranges of each group (groups hold consecutive parameters)
        bounds = torch.tensor([0] + [len(g.parameter_names) for g in self.groups]).cumsum(0).tolist()
        self.group_ranges: tuple[range, ...] = tuple(range(a, b) for a, b in zip(bounds[:-1], bounds[1:]))

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def group_sizes(self) -> torch.Tensor:
        """Number of scalar parameters in each module."""
        sizes = torch.tensor([p.numel() for p in self.parameters], dtype=torch.long)
        return torch.zeros(len(self), dtype=torch.long).index_add_(0, self.group_index, sizes)

    @classmethod
    def from_model(cls, model: nn.Module, unit_rule: UnitRule = default_unit_rule) -> ModulePartition:
        """Walk the module tree: a module the rule accepts is one group (with all its
        parameters); parameters owned directly by other modules form one group per owner.
        ``nn.TransformerEncoderLayer``/``DecoderLayer`` keep ``linear1``+``linear2`` as one FFN group.
        """
        groups: list[ModuleGroup] = []
        taken: set[int] = set()

        def add(name: str, params: list[tuple[str, nn.Parameter]]) -> None:
            fresh = [(n, p) for n, p in params if p.requires_grad and id(p) not in taken]
            taken.update(id(p) for _, p in fresh)
            if fresh:
                groups.append(ModuleGroup(name or "<root>", tuple(n for n, _ in fresh)))

        def qualify(prefix: str, name: str) -> str:
            return f"{prefix}.{name}" if prefix else name

        def walk(prefix: str, module: nn.Module) -> None:
            if prefix and unit_rule(prefix, module):
                add(prefix, [(qualify(prefix, n), p) for n, p in module.named_parameters()])
                return
            add(prefix, [(qualify(prefix, n), p) for n, p in module.named_parameters(recurse=False)])
            children = dict(module.named_children())
            if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
                ffn = [
                    (qualify(qualify(prefix, child), n), p)
                    for child in ("linear1", "linear2")
                    for n, p in children.pop(child).named_parameters()
                ]
                add(qualify(prefix, "ffn"), ffn)
            for child_name, child in children.items():
                walk(qualify(prefix, child_name), child)

        walk("", model)
        return cls(model, groups)

    @classmethod
    def from_names(cls, model: nn.Module, groups: Mapping[str, Sequence[str]]) -> ModulePartition:
        """An explicit partition: module name -> parameter names (every trainable parameter once)."""
        return cls(model, [ModuleGroup(name, tuple(params)) for name, params in groups.items()])
