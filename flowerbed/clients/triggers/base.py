"""Triggers and backdoors: what a poison does to an image, and which class it aims at.

Following BackFed's split of *poisons* from *malicious clients*, a trigger only
transforms images; any attack can use any trigger. A :class:`Backdoor` pairs a
trigger with its target class and a name (``"dmba-0"``) under which the server
reports its attack success rate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor

from flowerbed.clients.triggers.helpers.stealth import stealth_metrics
from flowerbed.platform.plugin_params import coerce_params


class TriggerParams(BaseModel):
    """Base for a trigger's hyper-parameters (run-config keys ``trigger.<name>.<param>``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Backdoor:
    """One backdoor: ``trigger`` maps an input to class ``target``; ``name`` labels its ASR.

    The server measures the attack success rate on the triggered test images of every
    class but ``target``, or, for a source-specific backdoor, of ``source_classes`` only.
    """

    name: str
    trigger: Trigger
    target: int
    source_classes: tuple[int, ...] = ()
    # The combined backdoor this one is a piece of (a DBA attacker's local trigger is part of
    # "dba-global"): measured, but not counted as a backdoor of its own in per-attack means.
    part_of: str = ""

    def __post_init__(self) -> None:
        if self.target < 0:
            raise ValueError(f"backdoor '{self.name}': target class must be >= 0, got {self.target}")
        sources = tuple(int(c) for c in self.source_classes)
        object.__setattr__(self, "source_classes", sources)
        if any(c < 0 for c in sources) or self.target in sources:
            raise ValueError(
                f"backdoor '{self.name}': source classes must be >= 0 and exclude the target class"
                f" {self.target}, got {list(sources)}"
            )

    def describe(self) -> dict[str, Any]:
        """JSON-able description for ``attackers.json``."""
        described = {"name": self.name, "target": self.target, "trigger": self.trigger.describe()}
        if self.source_classes:
            described["source_classes"] = list(self.source_classes)
        if self.part_of:
            described["part_of"] = self.part_of
        return described


class Trigger(ABC):
    """An image transformation that plants a backdoor pattern.

    ``index`` and ``count`` give this attacker's position among the ``count``
    attackers that use this trigger kind in a run (DBA takes piece ``index`` of
    the global pattern; DMBA picks a distinct channel and frequency set per
    index). ``image_shape`` is ``(C, H, W)``; ``seed`` fixes any random pattern.
    ``params`` is a ``Params`` instance, a mapping validated into one, or None
    for the defaults.
    """

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = TriggerParams

    def __init__(
        self,
        params: BaseModel | Mapping[str, Any] | None = None,
        *,
        index: int = 0,
        count: int = 1,
        image_shape: tuple[int, int, int],
        seed: int = 0,
    ) -> None:
        params = coerce_params(f"trigger.{self.name}", self.Params, params)
        if count < 1:
            raise ValueError(f"trigger '{self.name}': count must be >= 1, got {count}")
        if not 0 <= index < count:
            raise ValueError(f"trigger '{self.name}': index must be in [0, {count}), got {index}")
        if len(image_shape) != 3 or any(int(s) < 1 for s in image_shape):
            raise ValueError(f"trigger '{self.name}': image_shape must be (C, H, W), got {image_shape}")
        self.params = params
        self.index = index
        self.count = count
        self.image_shape: tuple[int, int, int] = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
        self.seed = seed

    @abstractmethod
    def apply(self, images: Tensor) -> Tensor:
        """[B,C,H,W] floats in [0,1] -> triggered copy, same shape and dtype, clamped to [0,1].

        Must not modify ``images`` in place and must be vectorised over the batch.
        """

    @classmethod
    def global_trigger(
        cls,
        params: BaseModel | Mapping[str, Any] | None,
        *,
        count: int,
        image_shape: tuple[int, int, int],
        seed: int,
    ) -> Trigger | None:
        """The combined trigger of all ``count`` attackers, if this kind has one (DBA); else None.

        The server reports its ASR next to each attacker's local trigger.
        """
        return None

    def describe(self) -> dict[str, Any]:
        """A JSON-able description written to the run folder (subclasses add their geometry)."""
        return {
            "trigger": self.name,
            "index": self.index,
            "count": self.count,
            "image_shape": list(self.image_shape),
            "params": self.params.model_dump(by_alias=True),
        }

    def stealth(self, images: Tensor) -> dict[str, float]:
        """Mean PSNR (dB) and SSIM between ``images`` and their triggered versions."""
        return stealth_metrics(images, self.apply(images))

    def check_images(self, images: Tensor) -> None:
        """Raise ValueError unless ``images`` is a float batch of this trigger's image shape."""
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"trigger '{self.name}' expects [B,{','.join(map(str, self.image_shape))}] images, "
                f"got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise ValueError(f"trigger '{self.name}' expects float images in [0,1], got {images.dtype}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(index={self.index}, count={self.count}, params={self.params!r})"
