"""Two item lists per CTA for the decode-warpgroup form of the tk kernels (``*_dwg.cu``).

That form has a third consumer warpgroup (``csrc/decode_wg.cuh``) that runs a CTA's *solo*
decode items from its own K/V ring while the other two run the CTA's other items, so a CTA's
time is about the larger of its two lists' loads, not their sum. :func:`assign_streams`
builds both lists; :func:`contended_loads` predicts a CTA's time with the prefix items'
slowdown beside the decode warpgroup, which is what the backend weighs against the one-list
plan (``ATTN_TK_DECODE_WG=auto``).
"""
from __future__ import annotations

import heapq
import os

import numpy as np

from . import plan, schedule
from .plan import DEC_ROWS, F_FLAGS, F_NROWS, F_ROW0, F_TILE0, F_TILE1, FLAG_DIRECT, FLAG_KV_SPLIT, FLAG_SOLO

# A solo item's cost in the plan's units (kv-split tiles of a CTA's time): per tile and per
# item; ATTN_TK_SOLO_COSTS=tile,item overrides them. Fitted by bench/tk_timeline.py on an H200
# (gqa-8b, hydragen-mqa, tree-3level; logs/s21-tk-timeline-decode-wg.log): solo items took
# 2.98 us + 1.38 a tile against 0.78 us a plan unit, i.e. 1.78 and 3.83 units (session 20
# had guessed 1.4 and 2.0, which put 1972 of gqa-8b's 2048 decode items on the decode
# warpgroup and made it the CTAs' longer list).
SOLO_COSTS = (1.78, 3.83)

# How much longer the prefix warpgroups' items take while the decode warpgroup runs beside
# them (ATTN_TK_DWG_SLOWDOWN overrides it): H200 timeline of gqa-8b, row-split items of 64
# tiles 70.5 us in the one-list kernel, 79.9 in the two-list one with no solo items (the
# shallower ring: 3 stages, 2 query slots, 184 registers) and 94.3 beside solo items; the fit
# over the three workloads: 1.02 -> 1.33 us a tile. The two lists' balance ignores it (the
# measured plans were built so); only the choice of form (contended_loads) uses it.
DWG_SLOWDOWN = 1.3
# The decode-warpgroup form is picked when its contended prediction is this much below the
# one-list plan's: at 1.3 the predictions were gqa-8b 0.91 (measured 0.91-0.95), hydragen-mqa
# 1.00 (0.95-1.04), chunkattn-mha 1.07 (1.02-1.06), tree-3level 1.08 (1.09-1.15), gqa-8b-long
# 1.22 (1.02-1.04); H200 runs 0153 / 0154. At 0.05 it left out hydragen-mqa-ragged's chunk op,
# predicted 0.96 and measured 0.94 (runs 0191 / 0193, 0195 / 0197); 0.03 takes it: 5.6 % faster,
# every other case within 0.3 % (runs 0199 / 0200, H200). The next prediction is hydragen-mqa's
# 1.00. ATTN_TK_DWG_MARGIN overrides it.
DWG_MARGIN = 0.03


def solo_costs_from_env(value: str | None) -> tuple[float, float]:
    """``ATTN_TK_SOLO_COSTS`` (``tile,item``, finite and non-negative), or :data:`SOLO_COSTS`."""
    if not value:
        return SOLO_COSTS
    costs = plan.env_floats(value)
    if len(costs) != 2 or min(costs) < 0:
        raise ValueError(f"ATTN_TK_SOLO_COSTS={value!r}: want two non-negative numbers, tile,item")
    return costs


def margin_from_env(value: str | None) -> float:
    """``ATTN_TK_DWG_MARGIN`` (one number in ``[0, 1)``), or :data:`DWG_MARGIN`."""
    if not value:
        return DWG_MARGIN
    got = plan.env_floats(value)
    if len(got) != 1 or not 0 <= got[0] < 1:
        raise ValueError(f"ATTN_TK_DWG_MARGIN={value!r}: want one number in [0, 1)")
    return got[0]


def check_env() -> None:
    """Raise ``ValueError`` naming ``ATTN_TK_SOLO_COSTS``, ``ATTN_TK_DWG_SLOWDOWN`` or
    ``ATTN_TK_DWG_MARGIN`` if one is set and does not parse. Called once per plan build (plans
    are cached by these values), so a typo is refused even where a plan has no solo items to
    read it, and no op call pays for the check."""
    solo_costs_from_env(os.environ.get("ATTN_TK_SOLO_COSTS"))
    slowdown_from_env(os.environ.get("ATTN_TK_DWG_SLOWDOWN"))
    margin_from_env(os.environ.get("ATTN_TK_DWG_MARGIN"))


def slowdown_from_env(value: str | None) -> float:
    """``ATTN_TK_DWG_SLOWDOWN`` (one finite number >= 1), or :data:`DWG_SLOWDOWN`."""
    if not value:
        return DWG_SLOWDOWN
    got = plan.env_floats(value)
    if len(got) != 1 or got[0] < 1:
        raise ValueError(f"ATTN_TK_DWG_SLOWDOWN={value!r}: want one number >= 1")
    return got[0]


def solo_candidates(items: np.ndarray) -> np.ndarray:
    """Which items the decode warpgroup can run: lone kv-split items (not paired, not direct)
    of at most :data:`plan.DEC_ROWS` rows that walk no suffixes (its loop masks no rows)."""
    flags = items[:, F_FLAGS]
    lone = ((flags & FLAG_KV_SPLIT) != 0) & ((flags & (plan.FLAG_PAIR | plan.FLAG_PAIRED | FLAG_DIRECT)) == 0)
    return lone & (items[:, F_NROWS] - items[:, F_ROW0] <= DEC_ROWS) & (items[:, plan.F_WALK] == 0)


def assign_streams(items: np.ndarray, num_ctas: int, solo: tuple[float, float] | None = None):
    """Both lists of every CTA, balanced by the plan's costs.

    The items that are not solo candidates (:func:`solo_candidates`) go to the prefix
    warpgroups' lists longest first, each to the least loaded CTA (LPT, as
    :func:`schedule.assign_ctas`). Then each candidate, longest first, goes where the CTA it
    lands on ends earliest: to a CTA's decode list as a solo item (``FLAG_SOLO``, costed with
    ``solo``) or, when that ends later, to a CTA's prefix list as a lone kv-split item, so that
    decode-heavy plans keep both kinds of warpgroups busy.

    Returns
    -------
    items : the same rows, each CTA's prefix list then its decode list, solo items flagged.
    cta_items : int32 ``[2 ctas + 1]``: CTA ``c``'s prefix list ``[o[2c], o[2c+1])``, its
        decode list ``[o[2c+1], o[2c+2])``.
    loads : float ``[ctas, 2]``: each CTA's planned prefix and decode loads.
    """
    tile_cost, item_cost = solo if solo is not None else solo_costs_from_env(os.environ.get("ATTN_TK_SOLO_COSTS"))
    cand = solo_candidates(items)
    rest = np.flatnonzero(~cand)
    ctas = max(1, num_ctas)
    starts, ends, cost = schedule.unit_costs(items[rest])
    lists: list = [[[], []] for _ in range(ctas)]  # per CTA: prefix and decode rows of items
    # Heaps in place of a scan of every CTA per item: this runs once per decode item (2048 in
    # gqa-8b) for every split factor tried, on every plan build (a new chunk table each
    # decode step builds one). Their keys order the CTAs as the scan did: (load, CTA) for LPT.
    l0, l1 = [0.0] * ctas, [0.0] * ctas
    heap = [(0.0, c) for c in range(ctas)]
    for u in np.argsort(-cost, kind="stable").tolist():  # LPT, ties to the lower CTA
        _, c = heapq.heappop(heap)
        lists[c][0].extend(rest[starts[u]:ends[u]].tolist())
        l0[c] += float(cost[u])
        heapq.heappush(heap, (l0[c], c))
    dec = np.flatnonzero(cand)
    dec_rows = dec.tolist()
    tiles = (items[dec, F_TILE1] - items[dec, F_TILE0]).astype(np.float64)
    solo_np = tiles * tile_cost + item_cost
    lone_np = tiles * plan.KV_TILE_COST + plan.ITEM_OVERHEAD
    as_solo, as_lone = solo_np.tolist(), lone_np.tolist()
    solo_rows = []
    ver = [0] * ctas
    order_np = np.argsort(-solo_np, kind="stable")
    order = order_np.tolist()
    # Runs of candidates of one cost, in that order.
    cuts = (np.flatnonzero((np.diff(solo_np[order_np]) != 0) | (np.diff(lone_np[order_np]) != 0)) + 1).tolist()
    for i, j in zip([0] + cuts, cuts + [len(order)]):
        # A run of candidates of one cost: each CTA's end with the next of them solo (its
        # decode list grows) or in its prefix list, keyed (end, that list's load, CTA): the
        # earliest end, ties to the shorter list, then the lower CTA.
        if i == j:
            continue
        sc, lc = as_solo[order[i]], as_lone[order[i]]
        if sc > 0 and lc > 0 and j - i >= BULK_RUN:
            _place_run(dec[order_np[i:j]], sc, lc, l0, l1, lists, solo_rows)
            continue
        # Each entry carries its CTA's version: an entry older than its CTA's last change is stale
        # (the CTA, unique in a heap, decides every comparison before the version is reached).
        hs = [(max(l0[c], l1[c] + sc), l1[c], c, ver[c]) for c in range(ctas)]
        hp = [(max(l0[c] + lc, l1[c]), l0[c], c, ver[c]) for c in range(ctas)]
        heapq.heapify(hs)
        heapq.heapify(hp)
        for k in order[i:j]:
            while hs[0][3] != ver[hs[0][2]]:
                heapq.heappop(hs)
            while hp[0][3] != ver[hp[0][2]]:
                heapq.heappop(hp)
            to_solo = hs[0][0] <= hp[0][0]
            if to_solo:
                c = hs[0][2]
                lists[c][1].append(dec_rows[k])
                l1[c] += sc
                solo_rows.append(dec_rows[k])
            else:
                c = hp[0][2]
                lists[c][0].append(dec_rows[k])
                l0[c] += lc
            ver[c] += 1
            es, ep = (max(l0[c], l1[c] + sc), l1[c], c, ver[c]), (max(l0[c] + lc, l1[c]), l0[c], c, ver[c])
            # The chosen heap's top is the CTA's own entry, now stale: replaced in one step.
            (heapq.heapreplace if to_solo else heapq.heappush)(hs, es)
            (heapq.heappush if to_solo else heapq.heapreplace)(hp, ep)
    load = np.array([l0, l1], dtype=np.float64).T.copy()
    out = items.copy()
    out[solo_rows, F_FLAGS] |= FLAG_SOLO
    order = [r for lst in lists for part in lst for r in part]
    sizes = np.array([[len(p), len(d)] for p, d in lists], dtype=np.int64).reshape(-1)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    return np.ascontiguousarray(out[order]), offsets, load


# Runs of at least this many candidates of one cost are placed in bulk (_place_run): its numpy
# passes cost about as much as 100 heap steps.
BULK_RUN = 64


def _place_run(rows: np.ndarray, sc: float, lc: float, l0: list, l1: list, lists: list, solo_rows: list) -> None:
    """:func:`assign_streams`' greedy for a run of candidates of one cost (``sc`` solo, ``lc``
    lone, both > 0), in bulk: the same choices as one heap step per candidate, in a few numpy
    passes (a new chunk table plans this for every split factor it tries).

    Why it is the same: a CTA's next solo item ends its lists at ``max(l0, l1 + sc)`` and its
    next lone item at ``max(l0 + lc, l1)``; the greedy takes the smallest such end over all CTAs
    (ties: solo, then the shorter list, then the lower CTA). On one CTA the two options are two
    machines with fixed job sizes, so its own choices follow the merged order of its solo
    completions ``l1 + a sc`` and lone completions ``l0 + b lc`` (ties to solo), and the end of
    its a-th solo item is ``max(l1 + a sc, l0)`` with the ``l0`` it started the run with (the
    other list has either not moved or ended earlier). Those ends only grow along a CTA's own
    sequence, so the greedy's n choices are the n smallest (end, kind, list load, CTA) keys of
    all CTAs' sequences. Loads accumulate one item at a time (np.cumsum), as the heaps' did,
    so equal histories stay bit-equal and the ties fall as before.
    """
    n = len(rows)
    L0, L1 = np.array(l0, dtype=np.float64), np.array(l1, dtype=np.float64)
    sizes = np.array([sc, lc])
    own, other = np.stack([L1, L0], axis=1), np.stack([L0, L1], axis=1)  # [ctas, kind]: the list it grows, the other

    def counts(t: float) -> np.ndarray:  # per CTA and kind, the items whose end is at most t (closed form)
        return np.where(other <= t, np.maximum(np.floor((t - own) / sizes), 0.0), 0.0)

    lo = float(np.minimum(np.maximum(L0, L1 + sc), np.maximum(L0 + lc, L1)).min())
    hi = float(np.maximum(L0, L1).max()) + n * max(sc, lc)
    while hi - lo > 1e-9 * max(1.0, hi):  # the n-th smallest end, closely enough
        mid = 0.5 * (lo + hi)
        if counts(mid).sum() >= n:
            hi = mid
        else:
            lo = mid
    t = hi * (1 + 1e-7) + 1e-7  # a margin over the closed form's rounding: the exact sort below decides
    m = counts(t).astype(np.int64) + 1  # [ctas, 2]: a superset of each CTA's items of each kind
    width = int(m.max())
    # Each CTA's loads item by item, accumulated along a row as the heaps added them.
    steps = np.empty((len(L0), 2, width + 1))
    steps[:, 0, 0], steps[:, 1, 0] = L1, L0
    steps[:, :, 1:] = sizes[None, :, None]
    acc = np.cumsum(steps, axis=2)
    end = np.maximum(acc[:, :, 1:], other[:, :, None])
    valid = np.arange(width)[None, None, :] < m[:, :, None]
    c_idx, kind, seq = np.nonzero(valid)
    e_end, e_load = end[c_idx, kind, seq], acc[c_idx, kind, seq]
    sel = np.lexsort((seq, c_idx, e_load, kind, e_end))[:n]
    if len(sel) < n:
        raise AssertionError("assign_streams: fewer placements than items in a run")
    c_sel, k_sel = c_idx[sel], kind[sel]
    by = np.lexsort((np.arange(n), k_sel, c_sel))  # grouped by CTA and kind, each in the greedy's order
    cg, kg, rs = c_sel[by], k_sel[by], rows[by].tolist()
    cuts = np.flatnonzero((np.diff(cg) != 0) | (np.diff(kg) != 0)) + 1
    for start, stop in zip([0] + cuts.tolist(), cuts.tolist() + [n]):
        c, k = int(cg[start]), int(kg[start])
        lists[c][1 - k].extend(rs[start:stop])
        if k == 0:
            l1[c] = float(acc[c, 0, stop - start])
        else:
            l0[c] = float(acc[c, 1, stop - start])
    solo_rows.extend(rows[k_sel == 0].tolist())


def list_loads(items: np.ndarray, cta_items: np.ndarray, solo: tuple[float, float] | None = None) -> np.ndarray:
    """Each CTA's prefix list's load (:func:`schedule.unit_costs`) and decode list's (solo
    costs) under a two-list schedule, float ``[ctas, 2]``."""
    tile_cost, item_cost = solo if solo is not None else solo_costs_from_env(os.environ.get("ATTN_TK_SOLO_COSTS"))
    o = np.asarray(cta_items, dtype=np.int64)
    ctas = (len(o) - 1) // 2
    starts, _, cost = schedule.unit_costs(items)
    which = np.searchsorted(o, starts, side="right") - 1  # list 2 c: CTA c's prefix, 2 c + 1: its decode list
    solo_cost = (items[starts, F_TILE1] - items[starts, F_TILE0]) * tile_cost + item_cost
    cost = np.where(which % 2 == 1, solo_cost, cost)
    return np.bincount(which, weights=cost, minlength=2 * ctas)[:2 * ctas].reshape(ctas, 2)


def planned_loads(items: np.ndarray, cta_items: np.ndarray, solo: tuple[float, float] | None = None) -> np.ndarray:
    """Each CTA's planned time under a two-list schedule: the larger of its two
    :func:`list_loads`, float ``[ctas]`` (what the lists were balanced by)."""
    loads = list_loads(items, cta_items, solo)
    return loads.max(axis=1) if len(loads) else np.zeros(0)


def contended_loads(items: np.ndarray, cta_items: np.ndarray, solo: tuple[float, float] | None = None,
                    slowdown: float | None = None) -> np.ndarray:
    """Each CTA's predicted time under a two-list schedule, in the one-list plan's units: the
    larger of its prefix list's load, times ``slowdown`` (:data:`DWG_SLOWDOWN`) where its
    decode list is not empty, and its decode list's load; float ``[ctas]``."""
    rho = slowdown if slowdown is not None else slowdown_from_env(os.environ.get("ATTN_TK_DWG_SLOWDOWN"))
    loads = list_loads(items, cta_items, solo)
    if not len(loads):
        return np.zeros(0)
    return np.maximum(np.where(loads[:, 1] > 0, rho * loads[:, 0], loads[:, 0]), loads[:, 1])
