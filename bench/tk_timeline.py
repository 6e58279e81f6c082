"""Where a tk launch's time goes: per-item clocks of a ``-DATTN_TK_TIMELINE`` build.

Builds the extension with ``-DATTN_TK_TIMELINE`` (its own cache entry): each consumer
warpgroup then stores the SM clock when it starts an item, when the item's query rows have
arrived, when its tile loop starts and ends, when its epilogue's stores start and have been
issued and when its epilogue is done, and the cycles it waited for K and for V tiles
(``stacked_debug.cuh`` ``timeline``), and the query warp its clock when it starts gathering
each slot's rows and when it has issued their copies. The launch is run once to warm up, then once more after flushing L2 (as the benchmark does), and this prints:

- per kind of item (source, row or kv split, rows, tiles): how many, their mean time, the
  mean waits for their queries, K tiles and V tiles, the mean time from the queries' arrival
  to the tile loop ("setup"), in the loop and after it ("tail": the merge of the two warpgroups'
  states of a direct item, then the epilogue, whose stores alone are "stores"), and their
  share of all warpgroup time (an item that spends its time in the K / V waits is waiting for
  memory, not computing);
- the spread of the CTAs' start and end times (launch skew and load balance), and how well
  the plan's costs predicted each CTA's time (the late and early CTAs' predicted loads);
- the items of the CTA that ends last, in order;
- the query waits of each CTA's first unit against the later ones (row- and kv-split), and
  when the query warp started and finished issuing those slots' copies;
- after all cases: the schedule costs that the measured times of the cases' units (lone
  items and pairs) fit, in the plan's units, as an ``ATTN_TK_PLAN_COSTS`` value.

    PYTHONPATH=. python bench/tk_timeline.py CASE ... [--show N]

``ATTN_TK_TIMELINE_L2``: ``flush`` (default: L2 flushed before the timed launch), ``warm``
(not flushed) or ``flush+q`` (flushed, then the queries read back into L2).

CASE: a spec workload (``tree-3level``, ``gqa-8b-ragged``, ...) or ``B,Hq,Hkv,P,S``;
``:chunk`` after it runs ``chunk_attention``.
"""
from __future__ import annotations

import argparse
import os
from collections import defaultdict

import numpy as np

NWG = 2
F_FLAGS, F_SRC, F_NROWS, F_TILE0, F_TILE1 = 0, 1, 5, 7, 8
FLAG_PAIR, FLAG_PAIRED = 4, 8  # a pair's first item runs on warpgroup 0 only, its second on 1
FLAG_SOLO = 32  # the decode-warpgroup kernels' solo items, recorded at warpgroup 0
(TL_START, TL_QREADY, TL_END, TL_TIMER, TL_KWAIT, TL_VWAIT, TL_LOOP, TL_TAIL, TL_EPI, TL_STORED,
 TL_QGATHER, TL_QISSUED, TL_FIELDS) = range(13)


def kind(item) -> str:
    split = ("kv2" if item[F_FLAGS] & (FLAG_PAIR | FLAG_PAIRED) else "solo" if item[F_FLAGS] & FLAG_SOLO else "kv") \
        if item[F_FLAGS] & 1 else "rows"
    return f"src{item[F_SRC]} {split} {item[F_NROWS]}r {item[F_TILE1] - item[F_TILE0]}t"


def plan_costs() -> tuple:
    """The plans' schedule costs in this process (``attn/tk_ext/plan.py``, after any
    ``ATTN_TK_PLAN_COSTS``): row-split tile, kv-split tile, item, pair tile, pair item."""
    from attn.tk_ext import plan

    return (plan.ROW_TILE_COST, plan.KV_TILE_COST, plan.ITEM_OVERHEAD, plan.PAIR_TILE_COST, plan.PAIR_OVERHEAD)


def units(items: np.ndarray):
    """``(first, last, category, tiles)`` of each schedule unit: a lone item ("rows" or "kv")
    or a pair ("pair": its two items' tiles)."""
    out, i, n = [], 0, len(items)
    while i < n:
        fl = int(items[i, F_FLAGS])
        j = i + 2 if fl & FLAG_PAIR else i + 1
        cat = "pair" if fl & FLAG_PAIR else "solo" if fl & FLAG_SOLO else ("kv" if fl & 1 else "rows")
        out.append((i, j, cat, int((items[i:j, F_TILE1] - items[i:j, F_TILE0]).sum())))
        i = j
    return out


def solo_costs() -> tuple:
    """A solo item's cost per tile and per item (``attn/tk_ext/decode_streams.py``, after any
    ``ATTN_TK_SOLO_COSTS``)."""
    from attn.tk_ext import decode_streams

    return decode_streams.solo_costs_from_env(os.environ.get("ATTN_TK_SOLO_COSTS"))


def planned_cost(cat: str, tiles: int, costs=None) -> float:
    row, kv, item, pair_tile, pair_item = costs or plan_costs()
    if cat == "pair":
        return pair_item + pair_tile * tiles
    if cat == "solo":
        tile, per_item = solo_costs()
        return per_item + tile * tiles
    return item + (kv if cat == "kv" else row) * tiles


def fit_costs(samples) -> str:
    """The schedule costs that ``(category, tiles, us)`` samples fit: per category a least-squares
    line ``us = a + b * tiles``, in units where a row-split tile costs the plan's 1.75."""
    lines, fits, costs = [], {}, plan_costs()
    for cat in ("rows", "kv", "pair", "solo"):
        pts = np.asarray([(t, us) for c, t, us in samples if c == cat], dtype=np.float64)
        if len(pts) == 0:
            continue
        if len(np.unique(pts[:, 0])) < 2:
            lines.append(f"  {cat}: {len(pts)} unit{'s' if len(pts) > 1 else ''}, all of {int(pts[0, 0])} tiles: "
                         f"{pts[:, 1].mean():.2f} us each (no fit: one length)")
            continue
        b, a = np.polyfit(pts[:, 0], pts[:, 1], 1)
        fits[cat] = (a, b)
        lines.append(f"  {cat}: {len(pts)} units of {int(pts[:, 0].min())}-{int(pts[:, 0].max())} tiles: "
                     f"{a:.2f} us + {b:.3f} us per tile")
    if "rows" in fits:
        unit = fits["rows"][1] / costs[0]  # us per cost unit
        c = list(costs)
        if "kv" in fits:
            c[1], c[2] = fits["kv"][1] / unit, fits["kv"][0] / unit
        if "pair" in fits:
            c[3], c[4] = fits["pair"][1] / unit, fits["pair"][0] / unit
        lines.append(f"  in the plan's units ({unit:.3f} us each; measured where fitted, else the "
                     f"plan's): ATTN_TK_PLAN_COSTS={','.join(f'{x:.2f}' for x in c)}")
        if "solo" in fits:
            lines.append(f"  ATTN_TK_SOLO_COSTS={fits['solo'][1] / unit:.2f},{fits['solo'][0] / unit:.2f}")
    return "\n".join(["schedule costs the units' times fit:"] + lines)


def ns_per_cycle(tl: np.ndarray, ctas: np.ndarray) -> float:
    """Timer ns per SM clock cycle, from the first and last item start of each CTA."""
    ratios = []
    for c in range(len(ctas) - 1):
        a, b = int(ctas[c]), int(ctas[c + 1]) - 1
        dc = float(tl[b, 0, TL_START]) - float(tl[a, 0, TL_START])
        if b > a and dc > 0:
            ratios.append((float(tl[b, 0, TL_TIMER]) - float(tl[a, 0, TL_TIMER])) / dc)
    return float(np.median(ratios)) if ratios else 1.0


def summarize(items: np.ndarray, ctas: np.ndarray, tl: np.ndarray, show: int = 40, samples=None,
              two_lists: bool = False) -> str:
    """The report of one launch.

    Parameters
    ----------
    items : int32 ``[n, 12]``, the scheduled item table of the launch.
    ctas : int32 ``[num_ctas + 1]``, CTA ``c`` ran items ``[ctas[c], ctas[c + 1])``.
    tl : uint64 / int64 ``[n, NWG, TL_FIELDS]``: clocks at start, queries ready and end; the
        timer (ns) at the start; cycles waited for K tiles, for V tiles; clocks at the tile
        loop's start and end, and when the epilogue's stores start and have been issued.
    samples : a list that gets ``(category, tiles, us)`` of each schedule unit (for
        :func:`fit_costs`): its first start to its last end.
    two_lists : ``ctas`` is a decode-warpgroup schedule, ``[2 num_ctas + 1]``: CTA ``c``'s
        prefix list ``[ctas[2c], ctas[2c+1])`` and its decode list ``[ctas[2c+1], ctas[2c+2])``,
        which run at the same time (a CTA's planned time is the larger list's).
    """
    lists = np.asarray(ctas, dtype=np.int64)
    if two_lists:
        ctas = lists[0::2]  # each CTA's items, both lists'
    else:
        lists = np.repeat(np.asarray(ctas, dtype=np.int64), 2)[1:]  # one list, an empty second one
    # A paired item has fields from its one warpgroup: the other's copy them (for the clocks
    # of item starts and ends) and are left out of every sum and mean.
    own = np.ones((len(items), NWG), dtype=bool)
    own[(items[:, F_FLAGS] & FLAG_PAIR) != 0, 1] = False
    own[(items[:, F_FLAGS] & FLAG_PAIRED) != 0, 0] = False
    own[(items[:, F_FLAGS] & FLAG_SOLO) != 0, 1] = False
    tl = tl.astype(np.float64)
    for w in range(NWG):
        tl[~own[:, w], w] = tl[~own[:, w], NWG - 1 - w]
    scale = ns_per_cycle(tl, ctas) / 1000.0  # us per cycle
    ncta = len(ctas) - 1
    cta_of = np.repeat(np.arange(ncta), np.diff(ctas))
    # Each CTA's clock against the timer: its first start's timer value.
    first = np.asarray(ctas[:-1], dtype=np.int64)
    t_first = tl[first, 0, TL_TIMER] / 1000.0
    t0 = t_first.min()

    def at(i, wg, mark):  # us since the kernel's first item start
        c = cta_of[i]
        return t_first[c] - t0 + (tl[i, wg, mark] - tl[first[c], 0, TL_START]) * scale

    def field(x):
        return np.where(own, x * scale, np.nan)

    dur = field(tl[:, :, TL_END] - tl[:, :, TL_START])
    qwait = field(tl[:, :, TL_QREADY] - tl[:, :, TL_START])
    kwait, vwait = field(tl[:, :, TL_KWAIT]), field(tl[:, :, TL_VWAIT])
    setup = field(tl[:, :, TL_LOOP] - tl[:, :, TL_QREADY])
    loop = field(tl[:, :, TL_TAIL] - tl[:, :, TL_LOOP])
    tail = field(tl[:, :, TL_END] - tl[:, :, TL_TAIL])
    merge = field(tl[:, :, TL_EPI] - tl[:, :, TL_TAIL])      # states merged in the CTA
    stores = field(tl[:, :, TL_STORED] - tl[:, :, TL_EPI])   # the epilogue's stores issued
    ends = np.asarray([max(at(int(lists[2 * c + k]) - 1, w, TL_END) for w in range(NWG) for k in (1, 2)
                           if lists[2 * c + k] > lists[2 * c + k - 1]) for c in range(ncta)])
    span = ends.max()
    lines = [f"{len(items)} items on {ncta} CTAs; kernel (first item start to last end) {span:.1f} us; "
             f"{scale * 1000:.3f} ns per cycle"]
    groups = defaultdict(list)
    for i, it in enumerate(items.tolist()):
        groups[kind(it)].append(i)
    total = np.nansum(dur)
    lines.append(f"{'kind':<26} {'items':>6} {'mean us':>8} {'q wait':>7} {'k wait':>7} {'v wait':>7} "
                 f"{'setup':>6} {'loop':>7} {'tail':>6} {'merge':>6} {'stores':>6} {'share':>6}")
    for k, idx in sorted(groups.items(), key=lambda kv: -dur[kv[1]].sum()):
        m = [float(np.nanmean(x[idx])) for x in (dur, qwait, kwait, vwait, setup, loop, tail, merge, stores)]
        lines.append(f"{k:<26} {len(idx):6d} {m[0]:8.2f} {m[1]:7.2f} {m[2]:7.2f} {m[3]:7.2f} {m[4]:6.2f} "
                     f"{m[5]:7.2f} {m[6]:6.2f} {m[7]:6.2f} {m[8]:6.2f} {100 * np.nansum(dur[idx]) / total:5.1f}%")
    # The first unit of each CTA waits for its queries at the kernel's start; later ones find
    # them gathered ahead. Split by kind, so that a change of the start (L2 state, gather) shows.
    kv_item = (items[:, F_FLAGS] & 1).astype(bool)
    is_first = np.zeros(len(items), dtype=bool)
    is_first[first] = True
    is_first[first[(items[first, F_FLAGS] & FLAG_PAIR) != 0] + 1] = True  # a pair's second item
    parts = []
    for label, sel in (("row-split", ~kv_item), ("kv-split", kv_item)):
        for when, mask in (("first", is_first), ("later", ~is_first)):
            q = qwait[sel & mask]
            if q.size and np.isfinite(q).any():
                parts.append(f"{label} {when} {np.nanmean(q):.2f} (n {np.isfinite(q).sum()})")
    lines.append("query wait (us, mean over warpgroups): " + "; ".join(parts))
    # The query warp's clocks for the same slots (0: not recorded), against the consumer's start.
    signed = tl.astype(np.int64)
    gather = np.where(signed[:, :, TL_QGATHER] > 0, signed[:, :, TL_QGATHER] - signed[:, :, TL_START], 0)
    issued = np.where(signed[:, :, TL_QISSUED] > 0, signed[:, :, TL_QISSUED] - signed[:, :, TL_START], 0)
    recorded = own & (signed[:, :, TL_QGATHER] > 0)
    parts = []
    for label, sel in (("row-split", ~kv_item), ("kv-split", kv_item)):
        for when, mask in (("first", is_first), ("later", ~is_first)):
            m = recorded & (sel & mask)[:, None]
            if m.any():
                g, d = gather[m] * scale, issued[m] * scale
                parts.append(f"{label} {when} {np.mean(g):+.2f} / {np.mean(d):+.2f}")
    if parts:
        lines.append("query warp, us after the consumer's start (starts gathering / has issued): " + "; ".join(parts))
    starts = t_first - t0
    busy = np.asarray([np.nansum(dur[ctas[c]:ctas[c + 1]]) / NWG for c in range(ncta)])
    gaps = ends - starts - busy
    lines.append(f"CTA start (us after the first): median {np.median(starts):.2f}, max {starts.max():.2f}; "
                 f"end: min {ends.min():.1f}, median {np.median(ends):.1f}, max {ends.max():.1f}; "
                 f"time between items per CTA: median {np.median(gaps):.2f} us")
    # Each unit's time (its first warpgroup start to its last end) and the plan's cost of it.
    cta_cost, costs = np.zeros((ncta, 2)), plan_costs()
    list_of = np.searchsorted(lists, np.arange(len(items)), side="right") - 1  # 2 c: a prefix list, 2 c + 1: a decode list
    for i, j, cat, tiles in units(items):
        t_start = min(at(k, w, TL_START) for k in range(i, j) for w in range(NWG) if own[k, w])
        t_end = max(at(k, w, TL_END) for k in range(i, j) for w in range(NWG) if own[k, w])
        if samples is not None:
            samples.append((cat, tiles, t_end - t_start))
        cta_cost[cta_of[i], list_of[i] % 2] += planned_cost(cat, tiles, costs)
    cta_cost = cta_cost.max(axis=1)
    order = np.argsort(ends)
    corr = float(np.corrcoef(cta_cost, ends)[0, 1]) if ncta > 2 and cta_cost.std() > 0 and ends.std() > 0 else float("nan")
    late, early = order[::-1][:3], order[:3]
    lines.append(f"plan's CTA loads against the CTAs' ends: correlation {corr:.2f}; ending last "
                 + ", ".join(f"CTA {c} {cta_cost[c]:.1f} units at {ends[c]:.1f} us" for c in late)
                 + "; first " + ", ".join(f"CTA {c} {cta_cost[c]:.1f} at {ends[c]:.1f}" for c in early))
    c = int(ends.argmax())
    lines.append(f"CTA {c} (ends last), its items: kind, start us, q wait, duration (warpgroup 0 / 1)")
    for i in range(int(ctas[c]), min(int(ctas[c + 1]), int(ctas[c]) + show)):
        lines.append(f"  {kind(items[i].tolist()):<26} {at(i, 0, TL_START):7.2f} {qwait[i, 0]:6.2f} "
                     f"{dur[i, 0]:6.2f} / {dur[i, 1]:6.2f}")
    return "\n".join(lines)


def _run(case: str, show: int, samples=None) -> str:
    import torch

    from tk_trace import case_launch

    op, args, items, ctas = case_launch(case)
    tl = torch.zeros((len(items), NWG, TL_FIELDS), dtype=torch.int64, device="cuda")
    os.environ["ATTN_TK_TIMELINE_PTR"] = str(tl.data_ptr())
    op(*args, backend="tk")
    l2 = os.environ.get("ATTN_TK_TIMELINE_L2", "flush")
    if l2 != "warm":
        # As the benchmark does; "flush+q" then reads q back into L2, so that a kernel start
        # that waits for cold queries and one that waits for other cold memory (its code,
        # tables, the first tiles) can be told apart.
        flush = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
        flush.zero_()
        if l2 == "flush+q":
            args[0].float().sum().item()
        elif l2 != "flush":
            raise SystemExit(f"ATTN_TK_TIMELINE_L2={l2!r}: expected flush, flush+q or warm")
    torch.cuda.synchronize()
    op(*args, backend="tk")
    torch.cuda.synchronize()
    os.environ.pop("ATTN_TK_TIMELINE_PTR")
    two_lists = bool((items[:, F_FLAGS] & FLAG_SOLO).any())  # a plan for the decode-warpgroup kernels
    return f"## {case}\n" + summarize(items, ctas, tl.cpu().numpy().view(np.uint64), show, samples,
                                      two_lists=two_lists)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--show", type=int, default=40, help="items of the last CTA to list")
    args = ap.parse_args(argv)
    flags = os.environ.get("ATTN_TK_NVCC_FLAGS", "")
    if "-DATTN_TK_TIMELINE" not in flags.split():
        os.environ["ATTN_TK_NVCC_FLAGS"] = (flags + " -DATTN_TK_TIMELINE").strip()
    samples: list = []
    for case in args.cases:
        print(_run(case, args.show, samples), flush=True)
    print(fit_costs(samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
