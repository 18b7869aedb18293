"""Measured peak extra CPU memory of a block of torch code.

``torch.profiler`` with ``profile_memory=True`` records every allocation and
free of torch's CPU allocator (size and time). Replaying them in time order
gives the running total of bytes the block holds on top of what existed
before it; its maximum is the block's peak extra memory. This is a
measurement of real allocator traffic (intermediates included), not an
estimate from tensor shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch.profiler import ProfilerActivity, profile

T = TypeVar("T")


def _allocation_events(prof: profile) -> list[tuple[int, int]]:
    """(time ns, signed bytes) of every allocator event the profiler saw, in time order."""
    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.name == "[memory]":
            events.append((node.start_time_ns, int(node.extra_fields.alloc_size)))
        stack.extend(node.children)
    events.sort(key=lambda e: e[0])
    return events


def measure_peak_allocation(block: Callable[[], T]) -> tuple[T, int]:
    """Run ``block()`` and return (its result, peak extra bytes it held on the CPU allocator).

    Memory freed by the block that was allocated before it counts as negative,
    so the peak is relative to the state when the block started (never below 0).
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        result = block()
    running = peak = 0
    for _, size in _allocation_events(prof):
        running += size
        peak = max(peak, running)
    return result, peak
