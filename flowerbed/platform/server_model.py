"""Server-side model access lent to the defences that need more than arrays.

FLTrust needs the server's own update on its small root data set; DeepSight
feeds random inputs through every local model. The ServerApp builds one
:class:`ServerModelHooks` from its workload and passes it as ``root_data``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord


@dataclass(frozen=True)
class ServerModelHooks:
    """Callables over the workload's model.

    root_update: ``(global arrays, server round) -> arrays`` of the server model
        after training from the global model on the server's root data set
        (FLTrust, Cao et al., NDSS 2021: same optimiser and local epochs as clients).
    predict: ``(arrays, inputs) -> probabilities`` of shape ``(batch, classes)``:
        load ``arrays`` into the model, eval mode, softmax of the logits, no grad.
    input_shape: shape of one model input, e.g. ``(3, 32, 32)`` (DeepSight's noise inputs).
    """

    root_update: Callable[[ArrayRecord, int], ArrayRecord] | None = None
    predict: Callable[[ArrayRecord, torch.Tensor], torch.Tensor] | None = None
    input_shape: tuple[int, ...] | None = None
