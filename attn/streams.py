"""Run independent kernel launches concurrently on side streams.

The phases of both ops (prefix levels, suffixes, chunk-first, sequence-first) read
different keys and write different partial states; only the final merge needs them all.
A compute-bound phase (stacked queries x a shared prefix, on the tensor cores) and a
memory-bound one (decode over private suffixes, on HBM) then share the GPU instead of
running one after the other: their CTAs sit on the same SMs when the tiles leave room
(see ``attn/triton/config.py``), so the op takes about the longer phase, not the sum.

The fork and join are stream waits on events: no host synchronisation, and a CUDA graph
capture records them as graph edges, so the concurrency survives replay.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

_SIDE: dict = {}


def side_streams(device: torch.device, count: int) -> list:
    """``count`` side streams of ``device``, created once and reused by every call."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    pool = _SIDE.setdefault(index, [])
    while len(pool) < count:
        pool.append(torch.cuda.Stream(device=index))
    return pool[:count]


def concurrently(launches: Sequence[Callable[[], None]], device: torch.device) -> None:
    """Call each of ``launches`` (each enqueues kernels on the current stream) so that their
    kernels may run at the same time; return with the current stream waiting for all of them.

    The first launch goes on the current stream, first: put the longest-running phase there,
    so that its CTAs are resident before the others fill the room left on each SM. On the
    CPU (Triton's interpreter) they simply run in order.
    """
    if len(launches) <= 1 or device.type != "cuda":
        for launch in launches:
            launch()
        return
    current = torch.cuda.current_stream(device)
    sides = side_streams(device, len(launches) - 1)
    for side in sides:
        side.wait_stream(current)
    launches[0]()
    for side, launch in zip(sides, launches[1:]):
        with torch.cuda.stream(side):
            launch()
    for side in sides:
        current.wait_stream(side)
