"""Where the tk kernels' work items run: pairs of decode items (one per consumer warpgroup)
and their assignment to the persistent CTAs (longest first, each to the least loaded CTA),
with the plan's costs (:mod:`attn.tk_ext.plan`, read at call time so that a tuning run or a
test can change them).
"""
from __future__ import annotations

import heapq

import numpy as np

from . import plan
from .plan import F_FLAGS, F_NROWS, F_ROW0, F_TILE0, F_TILE1, FLAG_KV_SPLIT, FLAG_PAIR, FLAG_PAIRED

# Which kv-split items pair_kv_items pairs by default: at most this many tiles (and rows; -1:
# any). H200 runs 0053 / 0054 (one machine; every kv-split item paired against none,
# logs/0053-0055-tk-pairs.log): tree-3level 11-13 % faster, chunkattn-mha 3.6-8.3 %,
# hydragen-mqa 2.5-6.2 %, gqa-8b 1.8-3.1 %, gqa-8b-long 0.4-1.5 %, but no-share-ragged
# (32-tile items of ragged lengths: the shorter item's warpgroup idles) 3.8 % slower, no-share
# even. Runs 0056-0058 (logs/0056-0058-tk-pair-caps.log): pairing only items of <= 16 rows
# made chunkattn-mha 1.6-3.3 % slower (its 32-row prefix items pair well) and nothing else
# faster by over 0.3 %. So long items stay alone, and any rows pair.
PAIR_MAX_TILES = 16
PAIR_MAX_ROWS = -1


def pair_kv_items(items: np.ndarray, max_tiles: int = PAIR_MAX_TILES, max_rows: int = PAIR_MAX_ROWS) -> np.ndarray:
    """Pair consecutive kv-split items of equal tile counts to run side by side.

    A kv-split item alone has its two consumer warpgroups take alternate tiles: an item of
    one tile leaves warpgroup 1 idle, and each warpgroup pays the item's fixed costs (query
    wait, epilogue: ~1.2 us on an H200, more than a tile) for half of its tiles. A pair runs
    the first item on warpgroup 0 and the second on warpgroup 1, each over all of its tiles
    (interleaved in the K/V ring), so the fixed costs of two items overlap. A paired item
    writes its state into its slot only (:func:`plan.clear_unwritten` has it write ``-inf`` into
    slot + 1, which the merge skips), and a direct one writes its rows without the
    warpgroups' exchange.

    Parameters
    ----------
    items : int32 ``[n, 12]`` in plan order (the items of one phase split are consecutive).
    max_tiles : pair only items of at most this many tiles; ``-1``: any, ``0``: none.
    max_rows : and of at most this many query rows; ``-1``: any.

    Returns
    -------
    A copy of ``items`` with ``FLAG_PAIR`` / ``FLAG_PAIRED`` set on the pairs (adjacent rows).
    """
    out = items.copy()
    n = out.shape[0]
    ntiles = out[:, F_TILE1] - out[:, F_TILE0]
    ok = (out[:, F_FLAGS] & FLAG_KV_SPLIT) != 0
    if max_tiles >= 0:
        ok &= ntiles <= max_tiles
    if max_rows >= 0:
        ok &= out[:, F_NROWS] - out[:, F_ROW0] <= max_rows
    # Greedy from the front: in each run of consecutive pairable neighbours (i, i + 1), the
    # pairs start at the run's first item and every second one after it.
    link = np.zeros(n, dtype=bool)
    if n > 1:
        link[:-1] = ok[:-1] & ok[1:] & (ntiles[:-1] == ntiles[1:])
    run_start = np.maximum.accumulate(np.where(link & ~np.concatenate([[False], link[:-1]]), np.arange(n), 0))
    first = np.flatnonzero(link & ((np.arange(n) - run_start) % 2 == 0))
    out[first, F_FLAGS] |= FLAG_PAIR
    out[first + 1, F_FLAGS] |= FLAG_PAIRED
    return out


# How many of a plan's last pairs backend._best_split tries to leave as lone items, as fractions
# of the CTA count (unpair_last).
UNPAIR_FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)


def unpair_last(items: np.ndarray, k: int) -> np.ndarray:
    """``items`` with the last ``k`` pairs (in item order) run as lone items again.

    LPT hands out a plan's cheapest units last, and pairs of decode items are usually those:
    the CTAs then end up to one pair apart (gqa-8b: 7 or 8 pairs after one prefix item each).
    Lone items are the finer units (each about 0.6 of a pair, though a pair does the work of
    two), so breaking the last few pairs lets LPT even out the CTAs' ends.
    """
    out = items.copy()
    first = np.flatnonzero(out[:, F_FLAGS] & FLAG_PAIR)
    last = first[max(0, len(first) - k):] if k > 0 else first[:0]
    out[last, F_FLAGS] &= ~FLAG_PAIR
    out[last + 1, F_FLAGS] &= ~FLAG_PAIRED
    return out


def _rebalance(lists: list, cost: np.ndarray, partners: int = 8, rounds: int = 1000) -> None:
    """Lower the largest CTA load of an LPT assignment (in place): move a unit of the most
    loaded CTA to one of the ``partners`` least loaded ones, or swap it with a cheaper unit
    there, whichever leaves the two CTAs' larger load smallest, until no move lowers it."""
    load = np.asarray([cost[lst].sum() if lst else 0.0 for lst in lists])
    for _ in range(rounds):
        hi = int(load.argmax())
        if not lists[hi]:
            return
        mine = cost[lists[hi]]
        best = (load[hi] - 1e-9, None)
        for c in np.argsort(load)[:partners + 1].tolist():
            if c == hi:
                continue
            theirs = np.append(cost[lists[c]], 0.0)  # 0: a move, not a swap
            d = mine[:, None] - theirs[None, :]
            worst = np.maximum(load[hi] - d, load[c] + d)
            worst[d <= 0] = np.inf
            i, j = np.unravel_index(int(worst.argmin()), worst.shape)
            if worst[i, j] < best[0]:
                best = (worst[i, j], (c, i, j))
        if best[1] is None:
            return
        c, i, j = best[1]
        u = lists[hi].pop(i)
        if j < len(lists[c]):
            lists[hi].append(lists[c].pop(j))
        lists[c].append(u)
        load[hi], load[c] = cost[lists[hi]].sum(), cost[lists[c]].sum()


def unit_costs(items: np.ndarray):
    """``(starts, ends, cost)`` of the schedule's units (an item, or a pair's two): rows
    ``[starts[u], ends[u])`` and the plan's cost of each, in kv-split tiles."""
    flags = items[:, F_FLAGS]
    pair, paired = (flags & FLAG_PAIR) != 0, (flags & FLAG_PAIRED) != 0
    if len(flags) and (paired[0] or pair[-1] or not np.array_equal(pair[:-1], paired[1:])):
        raise ValueError("every FLAG_PAIR item needs a FLAG_PAIRED item right after it, and only it")
    starts = np.flatnonzero(~paired)  # a unit starts at every item but a pair's second
    ends = np.append(starts[1:], items.shape[0])
    weight = np.where(flags & FLAG_KV_SPLIT, plan.KV_TILE_COST, plan.ROW_TILE_COST)
    weight = np.where(pair | paired, plan.PAIR_TILE_COST, weight)
    tiles = np.concatenate([[0.0], np.cumsum((items[:, F_TILE1] - items[:, F_TILE0]) * weight)])
    return starts, ends, tiles[ends] - tiles[starts] + np.where(pair[starts], plan.PAIR_OVERHEAD, plan.ITEM_OVERHEAD)


def _lpt(cost: np.ndarray, ctas: int) -> tuple[np.ndarray, np.ndarray]:
    """LPT of units already in the order they are handed out (``cost`` descending): each to
    the CTA of least load, ties to the lower index, as a heap of ``(load, cta)`` would. Returns
    each unit's CTA and its place in that CTA's list.

    A run of equal costs is handed out in batches: the next units go to the CTAs in the order
    of ``(load, cta)`` for as long as each of those is below where the first of them is after
    its unit, which is what one unit at a time would do (the same float additions).
    """
    n = len(cost)
    cta = np.empty(n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    load = np.zeros(ctas)
    taken = np.zeros(ctas, dtype=np.int64)
    idx = np.arange(ctas)
    bounds = np.flatnonzero(np.diff(cost)) + 1
    for lo, hi in zip(np.concatenate([[0], bounds]).tolist(), np.concatenate([bounds, [n]]).tolist()):
        x = cost[lo]
        while lo < hi:
            srt = np.lexsort((idx, load))
            ls = load[srt]
            top = ls[0] + x
            fits = (ls < top) | ((ls == top) & (srt < srt[0]))
            m = min(hi - lo, max(1, int(np.argmin(fits)) if not fits.all() else ctas))
            pick = srt[:m]
            cta[lo:lo + m] = pick
            rank[lo:lo + m] = taken[pick]
            taken[pick] += 1
            load[pick] = load[pick] + x
            lo += m
    return cta, rank


def lpt_max_load(items: np.ndarray, num_ctas: int) -> float:
    """The largest CTA load that :func:`assign_ctas` (without ``rebalance``) would plan."""
    _, _, cost = unit_costs(items)
    ctas = max(0, min(num_ctas, len(cost)))
    if ctas == 0:
        return 0.0
    cost = cost[np.argsort(-cost, kind="stable")]
    cta, _ = _lpt(cost, ctas)
    return float(np.bincount(cta, weights=cost, minlength=ctas).max())


def planned_loads(items: np.ndarray, cta_items: np.ndarray) -> np.ndarray:
    """Each CTA's planned time (the sum of its units' costs) under a schedule's ``cta_items``."""
    starts, _, cost = unit_costs(items)
    cta = np.searchsorted(np.asarray(cta_items), starts, side="right") - 1
    return np.bincount(cta, weights=cost, minlength=max(0, len(cta_items) - 1))


def assign_ctas(items: np.ndarray, num_ctas: int, mixed: bool = True, rebalance: bool = False):
    """Assign items to persistent CTAs: longest first, each to the least-loaded CTA (LPT).

    With ``mixed``, the second half of the CTAs run their lists shortest first. LPT hands
    every CTA its long (row-split, tensor-core bound) items before its short (kv-split,
    HBM bound) ones, so in LPT order the whole GPU computes first and streams after; run
    half of the CTAs the other way round and both kinds of work run at once, as triton's
    phases on streams do. The halves are contiguous so that the row blocks of one group
    (handed to neighbouring CTAs) still read their K/V tiles at about the same time (L2 hits).
    A pair (:func:`pair_kv_items`) is one unit: its items stay adjacent, in order, and cost
    ``plan.PAIR_TILE_COST`` per tile plus ``plan.PAIR_OVERHEAD``. With ``rebalance`` (not measured on a
    GPU yet: ``ATTN_TK_REBALANCE=1``), :func:`_rebalance` then lowers the largest CTA load
    that LPT's granularity leaves (tree-3level: 6 % above the mean) and each CTA's units are
    sorted longest first again.

    Returns
    -------
    items : the same rows, reordered so that each CTA's items are contiguous.
    cta_items : int32 ``[ctas + 1]``: CTA ``c`` runs rows ``[cta_items[c], cta_items[c + 1])``.
    """
    starts, ends, cost = unit_costs(items)
    ctas = max(0, min(num_ctas, len(starts)))
    if ctas == 0:
        return items, np.zeros(1, dtype=np.int32)
    order = np.argsort(-cost, kind="stable")
    if rebalance:
        heap = [(0.0, c) for c in range(ctas)]
        lists: list = [[] for _ in range(ctas)]
        for u in order.tolist():
            load, c = heapq.heappop(heap)
            lists[c].append(u)
            heapq.heappush(heap, (load + cost[u], c))
        _rebalance(lists, cost)
        for lst in lists:
            lst.sort(key=lambda u: (-cost[u], u))
        cta = np.empty(len(starts), dtype=np.int64)
        rank = np.empty(len(starts), dtype=np.int64)
        for c, lst in enumerate(lists):
            cta[lst] = c
            rank[lst] = np.arange(len(lst))
    else:
        cta, rank = _lpt(cost[order], ctas)
        cta, rank = cta[np.argsort(order)], rank[np.argsort(order)]
    if mixed:
        rank = np.where(cta >= ctas // 2, -rank, rank)
    units = np.lexsort((rank, cta))  # each CTA's units, in the order it runs them
    length = (ends - starts)[units]
    perm = np.repeat(starts[units] - (np.cumsum(length) - length), length) + np.arange(length.sum())
    offsets = np.zeros(ctas + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(np.bincount(cta, weights=ends - starts, minlength=ctas)).astype(np.int32)
    return np.ascontiguousarray(items[perm]), offsets


# Fields of a CTA's head (stacked_layout.cuh cta_heads): its item range, then its first two items.
HEAD_INTS = 2 + 2 * plan.ITEM_INTS


def cta_heads(items: np.ndarray, cta_items: np.ndarray, ends=None) -> np.ndarray:
    """Each CTA's item range and first two items (int32 ``[num_ctas, HEAD_INTS]``; zeros past
    the table), which the launch copies into the kernel's parameters: a CTA then starts its
    first unit (an item, or a pair's two) without reading ``cta_items`` and the item table
    from memory first. ``ends``: each CTA's range ends there instead of at ``cta_items[c + 1]``
    (a unit queue's CTAs, whose ranges are their first units: :func:`unit_queue.queue_heads`)."""
    ctas = np.asarray(cta_items, dtype=np.int64)
    n = max(0, len(ctas) - 1)
    out = np.zeros((n, HEAD_INTS), dtype=np.int32)
    if n == 0:
        return out
    last = ctas[1:] if ends is None else np.asarray(ends, dtype=np.int64)
    out[:, 0], out[:, 1] = ctas[:-1], last
    padded = np.concatenate([items.astype(np.int32), np.zeros((2, plan.ITEM_INTS), dtype=np.int32)])
    first = np.minimum(ctas[:-1], len(items))
    out[:, 2:2 + plan.ITEM_INTS] = padded[first]
    out[:, 2 + plan.ITEM_INTS:] = np.where((first + 1 < last)[:, None], padded[first + 1], 0)
    return out
