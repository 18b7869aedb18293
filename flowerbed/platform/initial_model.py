"""Start a federation from given weights (``model.init``) instead of a fresh model.

Backdoor attacks are usually studied on a global model that has already learned
the task (e.g. DBA, Xie et al., ICLR 2020; Neurotoxin, Zhang et al., ICML 2022):
``model.init`` points at such weights, typically the ``model.pt`` of an earlier
clean run, so many attack/defence runs can share one pre-training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from flowerbed.platform.config import ConfigError, RunConfig
from flowerbed.platform.recorder import MODEL


def initial_weights_path(config: RunConfig) -> Path | None:
    """The weights file ``model.init`` names (a file, or a run folder's model.pt); None if unset."""
    if not config.model.init:
        return None
    path = Path(config.model.init).expanduser().resolve()
    if path.is_dir():
        path = path / MODEL
    if not path.is_file():
        raise ConfigError([f"key 'model.init': {path} does not exist (give a weights file or a finished run folder)"])
    return path


def load_initial_weights(model: nn.Module, config: RunConfig) -> bool:
    """Load ``model.init`` into ``model``; False if unset. A file that does not fit the model is a ConfigError."""
    path = initial_weights_path(config)
    if path is None:
        return False
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same input problem
        raise ConfigError([f"key 'model.init': {path} is not a saved state dict ({type(error).__name__}: {error})"]) from None
    if isinstance(state, dict) and "model" in state and "round" in state:  # a checkpoint.pt
        state = state["model"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ConfigError(
            [f"key 'model.init': {path} does not fit model.name={config.model.name!r}: {str(error).splitlines()[0]}"]
        ) from None
    return True
