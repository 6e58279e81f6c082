"""The unit queue's host side on the CPU (attn/tk_ext/unit_queue.py): the order the units are
handed out in, each CTA's first unit and head, and the claims the kernel's fetchers make
(csrc/unit_queue.cuh), replayed here for every interleaving of a small grid."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from attn.tk_ext import plan, schedule, unit_queue


def _plan(num_sms=4):
    items, _ = plan.level_plan(40, 8, 2, [(1, 700), (5, 130)], 150, True, num_sms)
    items, _ = plan.mark_direct(items, 40, 2, 4)
    return schedule.pair_kv_items(items)


@pytest.mark.parametrize("mixed", [True, False], ids=["mixed", "lpt"])
@pytest.mark.parametrize("ctas", [1, 3, 4, 132])
def test_queue_order_hands_out_every_unit_largest_first(ctas, mixed):
    items = _plan()
    q_items, cta_items, units, front = unit_queue.queue_order(items, ctas, mixed)
    assert sorted(map(tuple, q_items.tolist())) == sorted(map(tuple, items.tolist()))  # the same rows
    starts, ends, cost = schedule.unit_costs(q_items)
    assert units.tolist() == starts.tolist()  # units contiguous, in queue order
    assert (np.diff(cost) <= 1e-9).all()  # largest first
    grid = min(ctas, len(starts))
    assert len(cta_items) == grid + 1 and int(cta_items[-1]) == len(q_items)
    assert front == (grid // 2 if mixed else grid)
    n = len(units)
    want = [units[c] if c < front else units[n - 1 - (c - front)] for c in range(grid)]
    assert cta_items[:-1].tolist() == [int(u) for u in want]
    heads = unit_queue.queue_heads(q_items, cta_items)
    for c, row in enumerate(want):
        u = int(np.searchsorted(starts, row))
        assert heads[c, :2].tolist() == [row, ends[u]]
        assert heads[c, 2:2 + plan.ITEM_INTS].tolist() == q_items[row].tolist()
        second = heads[c, 2 + plan.ITEM_INTS:]
        if ends[u] - row == 2:  # a pair: its second item too
            assert second.tolist() == q_items[row + 1].tolist()
        else:
            assert not second.any()


def test_equal_costs_keep_the_row_blocks_of_a_group_together():
    # Same-cost units in source, group, head, row and tile order: neighbouring CTAs start the
    # row blocks of one group at once (their K/V tiles shared in L2).
    items = _plan()
    q_items, _, units, _ = unit_queue.queue_order(items, 4, False)
    _, _, cost = schedule.unit_costs(q_items)
    keys = q_items[units][:, [plan.F_SRC, plan.F_GIDX, plan.F_HEAD, plan.F_ROW0, plan.F_TILE0]].tolist()
    for a, b in zip(range(len(units) - 1), range(1, len(units))):
        if abs(cost[a] - cost[b]) < 1e-12:
            assert keys[a] <= keys[b]


@pytest.mark.parametrize("grid,n,front", [(3, 3, 1), (3, 4, 1), (3, 8, 0), (3, 8, 3), (2, 9, 1), (1, 5, 0)])
def test_claims_take_every_unit_once_in_any_interleaving(grid, n, front):
    # Every order of the first claims (exhaustively, up to 6 of them), then random ones: each
    # CTA claims until its first claim past the end, as the fetchers do.
    prefixes = list(itertools.product(range(grid), repeat=min(6, n)))
    for k, prefix in enumerate(prefixes[:500]):
        rng = random.Random(k)
        lo = hi = 0
        taken = [c if c < front else n - 1 - (c - front) for c in range(grid)]
        active = list(range(grid))
        order = iter(prefix)
        while active:
            c = next(order, None)
            c = c if c in active else rng.choice(active)
            idx = unit_queue.claim(lo, hi, c < front, grid, n, front)
            lo, hi = (lo + 1, hi) if c < front else (lo, hi + 1)
            if idx < 0:
                active.remove(c)
            else:
                taken.append(idx)
        assert sorted(taken) == list(range(n)), (prefix, taken)
        assert lo + hi == n - grid + grid  # the valid claims, then one past the end per CTA


def test_counters_on_the_cpu_are_zero_and_one_per_call():
    c = unit_queue.Counters()
    a, b = c.get(torch.device("cpu")), c.get(torch.device("cpu"))
    assert a.dtype == torch.int64 and a.shape == (2,) and not a.any() and a.data_ptr() != b.data_ptr()


def test_the_queue_switch(monkeypatch):
    monkeypatch.delenv("ATTN_TK_QUEUE", raising=False)
    assert not unit_queue.enabled()
    monkeypatch.setenv("ATTN_TK_QUEUE", "1")
    assert unit_queue.enabled()
