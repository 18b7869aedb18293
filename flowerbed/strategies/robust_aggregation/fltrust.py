"""FLTrust, Cao et al., NDSS 2021 ("FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping").

The server trains its own copy of the global model on a small clean root data
set, with the clients' local training (the same number of SGD steps); its update
g0 bootstraps trust. Each client gets the trust score
``TS_i = ReLU(cos(g_i, g0))``, its update is rescaled to the norm of g0, and
the round's update is ``sum_i TS_i * g_i * |g0| / |g_i|  /  sum_i TS_i``.
Clients with zero trust are flagged.

The rule ignores how many examples a client holds: every accepted update takes the
root update's length. When the root update is longer than the benign ones (late in
training the server's 100 held-out images still have a loss the clients' own data no
longer do), a small one-sided client can move the model several times its own step;
on the bench's Dirichlet-0.5 federation the clean accuracy swings as a result
(benchmarks/RESULTS.md, bench-dmba).

Needs ``root_data=ServerModelHooks(root_update=...)`` from the ServerApp.
"""

from __future__ import annotations

import torch

from flowerbed.platform.registry import STRATEGIES
from flowerbed.platform.server_model import ServerModelHooks

from ..core.params import StrategyParams
from ..core.update_defence import Aggregation, UpdateDefence
from ..core.updates import UpdateBatch


def fltrust_aggregate(updates: torch.Tensor, root_update: torch.Tensor, norms: torch.Tensor | None = None) -> Aggregation:
    """FLTrust's trust-weighted, norm-aligned mean of ``updates`` given the server's ``root_update``.

    ``norms``: the updates' L2 norms, if already known (else computed here).
    """
    root_norm = torch.linalg.vector_norm(root_update.double())
    norms = (torch.linalg.vector_norm(updates, dim=1) if norms is None else norms).double()
    dots = (updates @ root_update).double()
    usable = (norms > 0) & (root_norm > 0)
    cosine = torch.where(usable, dots / (norms * root_norm).clamp(min=1e-300), torch.zeros_like(dots))
    trust = cosine.clamp(min=0.0)
    total = trust.sum()
    if float(total) == 0.0:
        return Aggregation(torch.zeros(updates.shape[1], dtype=updates.dtype), trust > 0, trust)
    scale = torch.where(usable, root_norm / norms.clamp(min=1e-300), torch.zeros_like(norms))
    update = (trust * scale / total).to(updates.dtype) @ updates
    return Aggregation(update, trust > 0, trust / total)


@STRATEGIES.register("fltrust")
class FLTrust(UpdateDefence):
    """FLTrust (Cao et al., 2021): weights clients by their direction's agreement with the server's root update."""

    name = "fltrust"
    Params = StrategyParams

    @classmethod
    def check_root_data(cls, root_data: ServerModelHooks | None) -> None:
        if root_data is None or root_data.root_update is None:
            raise ValueError(
                "strategy.fltrust: needs root_data=ServerModelHooks(root_update=...), the server's training on its root"
                " data (image classification keeps 'data.server-size' training images for it; it must be > 0)"
            )

    def aggregate_updates(self, batch: UpdateBatch, server_round: int) -> Aggregation:
        assert self.root_data is not None and self.root_data.root_update is not None and self._global_arrays is not None
        root_model = self.root_data.root_update(self._global_arrays, server_round)
        root_update = batch.flatten_like(root_model)[: batch.layout.num_learned]
        return fltrust_aggregate(batch.learned, root_update, batch.learned_norms)
