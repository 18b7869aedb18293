"""Gradient surgery for a primary task with auxiliary tasks: module-level (MGCM),
model-level (PCGrad-style on the flattened gradient) and no mitigation.

MGCM (Liu et al., arXiv:2409.15911): for every module m, if the auxiliary
gradient conflicts with the primary one there (cos(g_A^m, g_P^m) < 0), replace
it by its projection on the normal plane of the primary gradient,
``g_A^m <- g_A^m - <g_A^m, g_P^m> / ||g_P^m||^2 * g_P^m``. Only auxiliary
gradients change, only in conflicting modules; the update is
``g_P + sum_k w_k g_A_k``. The model-level baseline makes the same test and
projection once on the whole flattened gradient, as PCGrad (Yu et al.,
NeurIPS 2020) does, so a conflict confined to a few modules can be masked by
agreement elsewhere.

Memory: MGCM works on the per-parameter gradient tensors in place (inner
products per parameter, summed per module), so it never builds a flattened
copy of a task gradient. The flattened model-level path concatenates the
primary and one auxiliary gradient (2 x |theta| floats).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from flowerbed.extensions.mgcm.partition import ModulePartition

Mitigation = Literal["mgcm", "model-level", "none"]
MITIGATIONS: tuple[str, ...] = ("mgcm", "model-level", "none")
TaskGradient = Sequence[Tensor]  # one tensor per parameter, in partition order


@dataclass(frozen=True)
class ConflictReport:
    """Cosines between each auxiliary gradient and the primary one, before mitigation.

    ``module_cosine`` is [num_aux, num_modules] (nan where either gradient is zero in
    that module); ``model_cosine`` is [num_aux] over the whole flattened gradient.
    """

    module_cosine: Tensor
    model_cosine: Tensor

    @property
    def module_conflicts(self) -> Tensor:
        """[num_aux, num_modules] bool: cos < 0 in that module."""
        return self.module_cosine < 0

    @property
    def model_conflicts(self) -> Tensor:
        """[num_aux] bool: cos < 0 over the whole model."""
        return self.model_cosine < 0

    @property
    def masked(self) -> Tensor:
        """[num_aux] bool: some module conflicts but the model-level cosine does not."""
        return self.module_conflicts.any(dim=1) & ~self.model_conflicts

    def conflict_rate(self) -> float:
        """Share of (auxiliary task, module) pairs in conflict, among pairs with a defined cosine."""
        defined = ~torch.isnan(self.module_cosine)
        return float(self.module_conflicts.sum() / defined.sum().clamp(min=1))


def _per_parameter_dots(a: TaskGradient, b: TaskGradient) -> Tensor:
    """<a_i, b_i> for every parameter i, without flattening (views + vdot)."""
    return torch.stack([torch.vdot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)])


def module_inner_products(
    primary: TaskGradient, auxiliary: TaskGradient, partition: ModulePartition
) -> tuple[Tensor, Tensor, Tensor]:
    """Per module: <g_A, g_P>, ||g_P||^2, ||g_A||^2 (each [num_modules])."""
    index = partition.group_index
    zeros = torch.zeros(len(partition), dtype=primary[0].dtype)
    return (
        zeros.index_add(0, index, _per_parameter_dots(auxiliary, primary)),
        zeros.index_add(0, index, _per_parameter_dots(primary, primary)),
        zeros.index_add(0, index, _per_parameter_dots(auxiliary, auxiliary)),
    )


def _cosine(dot: Tensor, sq_a: Tensor, sq_b: Tensor) -> Tensor:
    norm = (sq_a * sq_b).sqrt()
    return torch.where(norm > 0, dot / norm.clamp(min=torch.finfo(dot.dtype).tiny), torch.full_like(dot, float("nan")))


def conflict_report(
    primary: TaskGradient, auxiliaries: Sequence[TaskGradient], partition: ModulePartition
) -> ConflictReport:
    """Module-level and model-level cosines of every auxiliary gradient against the primary."""
    module_cos, model_cos = [], []
    for auxiliary in auxiliaries:
        dot, pp, aa = module_inner_products(primary, auxiliary, partition)
        module_cos.append(_cosine(dot, pp, aa))
        model_cos.append(_cosine(dot.sum(), pp.sum(), aa.sum()))
    num_modules = len(partition)
    return ConflictReport(
        module_cosine=torch.stack(module_cos) if module_cos else torch.empty(0, num_modules),
        model_cosine=torch.stack(model_cos) if model_cos else torch.empty(0),
    )


def project_module_level(
    primary: TaskGradient, auxiliaries: Sequence[TaskGradient], partition: ModulePartition
) -> Tensor:
    """MGCM: in every module where an auxiliary gradient conflicts with the primary,
    project it (in place) on the primary's normal plane. Returns [num_aux, num_modules]
    bool, True where a projection happened. Allocates O(#parameters) scalars only.
    """
    projected = []
    for auxiliary in auxiliaries:
        dot, pp, _ = module_inner_products(primary, auxiliary, partition)
        conflict = (dot < 0) & (pp > 0)
        coefficients = torch.where(conflict, dot / pp.clamp(min=torch.finfo(pp.dtype).tiny), 0.0)
        for group, coefficient in zip(partition.group_ranges, coefficients.tolist()):
            if coefficient != 0.0:
                for i in group:
                    auxiliary[i].sub_(primary[i], alpha=coefficient)
        projected.append(conflict)
    return torch.stack(projected) if projected else torch.zeros(0, len(partition), dtype=torch.bool)


def project_model_level(
    primary: TaskGradient, auxiliaries: Sequence[TaskGradient], flatten: bool = True
) -> Tensor:
    """Model-level (PCGrad-style, primary kept fixed): one cosine test and one projection per
    auxiliary over the whole gradient, written back in place. Returns [num_aux] bool.

    ``flatten=True`` concatenates each task gradient into one vector, as PCGrad's
    reference implementation does; ``flatten=False`` computes the same result from
    per-parameter inner products (no flattened copies), for the memory comparison.
    """
    projected = []
    if flatten:
        flat_primary = torch.cat([g.reshape(-1) for g in primary])
        pp = torch.dot(flat_primary, flat_primary)
        for auxiliary in auxiliaries:
            flat_auxiliary = torch.cat([g.reshape(-1) for g in auxiliary])
            dot = torch.dot(flat_auxiliary, flat_primary)
            conflict = bool(dot < 0) and bool(pp > 0)
            if conflict:
                flat_auxiliary.sub_(flat_primary, alpha=float(dot / pp))
                offset = 0
                for g in auxiliary:
                    g.copy_(flat_auxiliary[offset : offset + g.numel()].view_as(g))
                    offset += g.numel()
            del flat_auxiliary
            projected.append(conflict)
        return torch.tensor(projected, dtype=torch.bool)
    pp = _per_parameter_dots(primary, primary).sum()
    for auxiliary in auxiliaries:
        dot = _per_parameter_dots(auxiliary, primary).sum()
        conflict = bool(dot < 0) and bool(pp > 0)
        if conflict:
            coefficient = float(dot / pp)
            for g, p in zip(auxiliary, primary):
                g.sub_(p, alpha=coefficient)
        projected.append(conflict)
    return torch.tensor(projected, dtype=torch.bool)


def combine(primary: TaskGradient, auxiliaries: Sequence[TaskGradient], weights: Sequence[float], out: Sequence[Tensor]) -> None:
    """out_i = g_P,i + sum_k w_k g_A_k,i, written into the existing ``out`` tensors."""
    for i, target in enumerate(out):
        target.copy_(primary[i])
        for auxiliary, weight in zip(auxiliaries, weights):
            target.add_(auxiliary[i], alpha=weight)


def mitigate(
    mitigation: str,
    primary: TaskGradient,
    auxiliaries: Sequence[TaskGradient],
    weights: Sequence[float],
    partition: ModulePartition,
    out: Sequence[Tensor],
) -> None:
    """Resolve conflicts with ``mitigation`` (auxiliaries are changed in place) and write the
    combined gradient into ``out`` (e.g. every parameter's ``.grad``)."""
    if mitigation == "mgcm":
        project_module_level(primary, auxiliaries, partition)
    elif mitigation == "model-level":
        project_model_level(primary, auxiliaries, flatten=True)
    elif mitigation != "none":
        raise ValueError(f"mitigation must be one of {', '.join(MITIGATIONS)}, got {mitigation!r}")
    combine(primary, auxiliaries, weights, out)


class GradientSurgery:
    """Per-task gradients of a primary and auxiliary losses, combined with a conflict mitigation.

    ``backward(primary_loss, auxiliary_losses)`` replaces ``loss.backward()``: it fills every
    partition parameter's ``.grad`` with ``g_P + sum_k w_k g_A_k`` after mitigation, and
    returns the :class:`ConflictReport` of the raw gradients.
    """

    def __init__(self, partition: ModulePartition, mitigation: str = "mgcm", weights: Sequence[float] = (1.0,)) -> None:
        if mitigation not in MITIGATIONS:
            raise ValueError(f"mitigation must be one of {', '.join(MITIGATIONS)}, got {mitigation!r}")
        if any(w < 0 for w in weights):
            raise ValueError(f"auxiliary task weights must be >= 0, got {tuple(weights)}")
        self.partition = partition
        self.mitigation = mitigation
        self.weights = tuple(float(w) for w in weights)

    def task_gradients(self, primary_loss: Tensor, auxiliary_losses: Sequence[Tensor]) -> tuple[list[Tensor], list[list[Tensor]]]:
        """Separate gradients of every loss w.r.t. the partition's parameters (zeros where unused)."""
        losses = [primary_loss, *auxiliary_losses]
        params = self.partition.parameters
        grads = [
            list(torch.autograd.grad(loss, params, retain_graph=i < len(losses) - 1, materialize_grads=True))
            for i, loss in enumerate(losses)
        ]
        return grads[0], grads[1:]

    def backward(self, primary_loss: Tensor, auxiliary_losses: Sequence[Tensor]) -> ConflictReport:
        if len(auxiliary_losses) != len(self.weights):
            raise ValueError(f"got {len(auxiliary_losses)} auxiliary losses for {len(self.weights)} weights")
        primary, auxiliaries = self.task_gradients(primary_loss, auxiliary_losses)
        report = conflict_report(primary, auxiliaries, self.partition)
        out = []
        for p in self.partition.parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            out.append(p.grad)
        mitigate(self.mitigation, primary, auxiliaries, self.weights, self.partition, out)
        return report
