"""What a set of plan costs would do to the tk schedules, priced by measured unit times (CPU).

The tk planner (:mod:`attn.tk_ext.plan`, :mod:`attn.tk_ext.schedule`) places a spec workload's
units (items and pairs) on the persistent CTAs by their costs in the plan's units
(``ATTN_TK_PLAN_COSTS``). ``bench/tk_timeline.py`` fits the units' measured times as
``fixed + per_tile * tiles`` for row-split items, lone kv-split items and pairs. This plans each
workload under each set of costs and prices every CTA's units with those fitted times: the
largest and the median CTA time in us. An estimate to choose what to measure, not a measurement:
for costs that change a plan's splits it has been wrong (session 18 priced gqa-8b's largest CTA
130.6 -> 125.6 us under the fitted costs; on the H200 the op became 3.9 % slower, runs 0124 /
0125), since the fit prices every row-split tile alike however many prefix items a CTA runs.

    PYTHONPATH=. python bench/tk_plan_estimate.py --costs 1.75,1.0,1.7 1.75,1.04,4.26,1.07,2.75 \\
        --rows 5.47,1.034 --kv 2.52,0.618 --pairs 1.63,0.634
"""
from __future__ import annotations

import argparse
import os
from contextlib import contextmanager

import numpy as np
import torch

from attn.tk_ext import plan, schedule
from attn.workloads import SPEC_WORKLOADS, Workload

NUM_SMS = 132  # an H100 / H200


@contextmanager
def plan_costs(costs: tuple):
    """The planner's five costs set to ``costs`` (:func:`plan.costs_from_env` order) for a while."""
    names = ("ROW_TILE_COST", "KV_TILE_COST", "ITEM_OVERHEAD", "PAIR_TILE_COST", "PAIR_OVERHEAD")
    old = tuple(getattr(plan, n) for n in names)
    for n, v in zip(names, costs):
        setattr(plan, n, v)
    try:
        yield
    finally:
        for n, v in zip(names, old):
            setattr(plan, n, v)


def placed_plan(w: Workload, num_sms: int = NUM_SMS):
    """``(items, cta_items)`` of ``w``'s shared-prefix plan as the tk backend builds it."""
    from attn.tk_ext.backend import TKBackend

    tk = TKBackend()
    tk._num_sms = lambda device: num_sms
    # One-list plans only: a decode-warpgroup CTA runs its two lists at once, cta_times would add them.
    was = os.environ.get("ATTN_TK_DECODE_WG")
    os.environ["ATTN_TK_DECODE_WG"] = "0"
    try:
        items, ctas, *_ = tk.placed_level_plan(w.batch, w.q_heads, w.kv_heads, w.levels, w.suffix, w.ragged,
                                               torch.device("cpu"))
    finally:
        if was is None:
            os.environ.pop("ATTN_TK_DECODE_WG")
        else:
            os.environ["ATTN_TK_DECODE_WG"] = was
    return items, ctas


def cta_times(items: np.ndarray, cta_items: np.ndarray, rows, kv, pairs) -> np.ndarray:
    """Each CTA's time (us): the sum of its units', each ``fixed + per_tile * tiles`` of its kind
    (``rows``, ``kv``, ``pairs``: ``(fixed, per_tile)``; a pair's tiles are both items')."""
    starts, ends, _ = schedule.unit_costs(items)
    flags = items[:, plan.F_FLAGS]
    tiles = np.concatenate([[0], np.cumsum(items[:, plan.F_TILE1] - items[:, plan.F_TILE0])])
    n = tiles[ends] - tiles[starts]
    f = flags[starts]
    fixed = np.where(f & plan.FLAG_PAIR, pairs[0], np.where(f & plan.FLAG_KV_SPLIT, kv[0], rows[0]))
    per = np.where(f & plan.FLAG_PAIR, pairs[1], np.where(f & plan.FLAG_KV_SPLIT, kv[1], rows[1]))
    cta = np.searchsorted(np.asarray(cta_items), starts, side="right") - 1
    return np.bincount(cta, weights=fixed + per * n, minlength=len(cta_items) - 1)


def _pair_of_floats(text: str) -> tuple:
    a, b = (float(x) for x in text.split(","))
    return a, b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--costs", nargs="+", default=[",".join(map(str, plan.DEFAULT_COSTS))],
                    help="ATTN_TK_PLAN_COSTS values to compare")
    ap.add_argument("--rows", type=_pair_of_floats, required=True, help="fixed,per_tile us of a row-split item")
    ap.add_argument("--kv", type=_pair_of_floats, required=True, help="fixed,per_tile us of a lone kv-split item")
    ap.add_argument("--pairs", type=_pair_of_floats, required=True, help="fixed,per_tile us of a pair")
    ap.add_argument("--sms", type=int, default=NUM_SMS)
    args = ap.parse_args(argv)
    for text in args.costs:
        costs = plan.costs_from_env(text)
        cells = []
        with plan_costs(costs):
            for w in SPEC_WORKLOADS:
                t = cta_times(*placed_plan(w, args.sms), args.rows, args.kv, args.pairs)
                cells.append(f"{w.name} {t.max():.1f} / {np.median(t):.1f}")
        print(f"{text}: largest / median CTA us: " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
