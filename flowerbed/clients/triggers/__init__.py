"""Triggers: image transformations that plant a backdoor (one kind per module)."""

from flowerbed.clients.triggers.base import Backdoor, Trigger, TriggerParams

__all__ = ["Backdoor", "Trigger", "TriggerParams"]
