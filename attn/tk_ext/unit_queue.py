"""The host side of the tk kernels' unit queue (``csrc/unit_queue.cuh``): the order in which the
persistent CTAs take a plan's units (an item, or a pair's two) as they go, and the device
counters they take them with.

A static plan fixes each CTA's units by the plan's costs (:func:`schedule.assign_ctas`); it
prices a ragged suffix at its capacity, as reading the lengths would be a sync, and its coarse
units leave its CTAs ending apart (chunkattn-mha on an H100: 46-66 us). With the queue
(``ATTN_TK_QUEUE=1``) each CTA starts one unit the host picks and then claims the next from a
device counter whenever it starts a unit, so the CTAs that end early take more.
"""
from __future__ import annotations

import numpy as np
import torch

from ..env import getenv
from . import plan, schedule


def enabled() -> bool:
    """Whether plans without the decode warpgroup run from the unit queue (``ATTN_TK_QUEUE=1``;
    default ``0``). Read when a plan is built and part of the plan's cache key.

    Off because it is no faster. On an H100 (session 34, runs 0016-0019 against the static
    plan, ``bench/results/nvidia-h100-80gb-hbm3/logs/0039-tk-queue.log``) chunkattn-mha-ragged,
    the case it was built for, moved by -0.5 % and +1.0 %. In mixed order gqa-8b-long was 29-31 %
    slower and tree-3level 2-6 % slower. Largest first everywhere (``ATTN_TK_ORDER=lpt``),
    hydragen-mqa was 19-21 % slower: every CTA starts on the compute-bound prefix items at once.
    Every other case was within 2.6 % either way."""
    return getenv("ATTN_TK_QUEUE", "0") == "1"


def queue_order(items: np.ndarray, num_ctas: int, mixed: bool = True):
    """A placed plan's items as a unit queue.

    The units are handed out largest first (the plan's costs: :func:`schedule.unit_costs`),
    equal costs in the order of their source, group, head, first row and first tile, so that
    the row blocks of one group start on neighbouring CTAs at about the same time and share
    their K/V tiles in L2. With ``mixed`` (the static plan's mixed order) the second half of
    the CTAs take from the back: they start on the shortest units while the first half start on
    the longest, so that compute-bound and memory-bound work run at once.

    Parameters
    ----------
    items : int32 ``[n, 12]``, a pair's two items adjacent (:func:`schedule.pair_kv_items`).
    num_ctas : the SMs to fill; the grid is ``min(num_ctas, units)``.
    mixed : whether CTAs ``[ctas // 2, ctas)`` take from the back.

    Returns
    -------
    items : the same rows, each unit's contiguous, units in queue order.
    cta_items : int32 ``[ctas + 1]``: CTA ``c``'s first unit starts at row ``cta_items[c]``
        (the last entry, ``n``, is not read).
    units : int32 ``[units]``: the first row of each unit, in queue order.
    front : the CTAs ``[0, front)`` that take from the front.
    """
    starts, ends, cost = schedule.unit_costs(items)
    n = len(starts)
    ctas = max(0, min(num_ctas, n))
    head = items[starts]
    order = np.lexsort((head[:, plan.F_TILE0], head[:, plan.F_ROW0], head[:, plan.F_HEAD], head[:, plan.F_GIDX],
                        head[:, plan.F_SRC], -cost))
    length = (ends - starts)[order]
    first = np.cumsum(length) - length
    perm = np.repeat(starts[order] - first, length) + np.arange(int(length.sum()))
    units = first.astype(np.int32)
    front = ctas // 2 if mixed else ctas
    cta = np.arange(ctas)
    firsts = np.where(cta < front, cta, n - 1 - (cta - front)) if ctas else cta
    cta_items = np.append(units[firsts], items.shape[0]).astype(np.int32)
    return np.ascontiguousarray(items[perm]), cta_items, units, int(front)


def queue_heads(items: np.ndarray, cta_items: np.ndarray) -> np.ndarray:
    """Each CTA's head (:func:`schedule.cta_heads`) for a queue: its first unit's rows as its
    range, and that unit's items."""
    starts, ends, _ = schedule.unit_costs(items)
    firsts = np.asarray(cta_items[:-1], dtype=np.int64)
    return schedule.cta_heads(items, cta_items, ends=ends[np.searchsorted(starts, firsts)])


def claim(lo: int, hi: int, front_cta: bool, ctas: int, nunits: int, front: int) -> int:
    """The queue index a claim gets (``-1``: none left), with ``lo``, ``hi`` the counter's halves
    before it: what ``fetch_units`` in ``csrc/unit_queue.cuh`` computes, for the tests."""
    if ctas + lo + hi >= nunits:
        return -1
    return front + lo if front_cta else nunits - 1 - (ctas - front) - hi


class Counters:
    """The queue counters (int64 ``[2]``, zero, and left zero by each launch) a launch takes.

    A counter is shared only by launches that cannot run at once: one per (device, stream) for
    eager calls, and for each call captured into a CUDA graph one of its own from a slab zeroed
    before (so that two graphs, or a graph and eager calls, never share one), or, once the slab
    is used up, a new zeroed tensor in the graph (a fill node before the launch in each replay).
    """

    SLAB = 4096

    def __init__(self):
        self._streams: dict = {}
        self._slabs: dict = {}
        self._taken: dict = {}

    def get(self, device: torch.device) -> torch.Tensor:
        if device.type != "cuda":  # (the CPU tests' emulated extension)
            return torch.zeros(2, dtype=torch.int64, device=device)
        idx = device.index if device.index is not None else torch.cuda.current_device()
        if torch.cuda.is_current_stream_capturing():
            slab, taken = self._slabs.get(idx), self._taken.get(idx, 0)
            if slab is None or taken >= self.SLAB:
                return torch.zeros(2, dtype=torch.int64, device=device)
            self._taken[idx] = taken + 1
            return slab[taken]
        if idx not in self._slabs:
            self._slabs[idx] = torch.zeros(self.SLAB, 2, dtype=torch.int64, device=device)
        key = (idx, torch.cuda.current_stream(device).cuda_stream)
        counter = self._streams.get(key)
        if counter is None:
            counter = self._streams[key] = torch.zeros(2, dtype=torch.int64, device=device)
        return counter
