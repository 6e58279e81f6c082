"""The tk work-item plans (attn/tk_ext/plan.py, schedule.py): executed by the float64 emulation
of the kernels (tests/tk_emulation.py) against the reference, and their structure (pairs, CTA
heads, covered slots, direct plans, splits, the CTA schedule, cost and split switches)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attn.problems import chunk_problem, shared_prefix_problem
from attn.tk_ext import backend as tkb
from attn.tk_ext import plan, schedule
from attn.workloads import Workload, make_inputs, to_chunk_form
from cases import CASES
from tk_emulation import PLAN_CASES, assert_states_match_reference, run_chunk_emulation, run_level_emulation

W = Workload


# Skewed tile costs (ATTN_TK_PLAN_COSTS) split rows200-split's prefix differently
# (test_skewed_costs_change_a_plan).
SKEWED_COSTS = (8.0, 0.5, 0.0)


def test_skewed_costs_change_a_plan(monkeypatch):
    def items():
        return plan.level_plan(50, 8, 2, [(1, 700), (5, 130)], 150, True, num_sms=3)[0]

    default = items()
    for name, value in zip(("ROW_TILE_COST", "KV_TILE_COST", "ITEM_OVERHEAD"), SKEWED_COSTS):
        monkeypatch.setattr(plan, name, value)
    assert items().shape[0] != default.shape[0]


@pytest.mark.parametrize("pairs", [None, "-1,-1", "0,-1", "1,-1"], ids=["pairs", "pairs-all", "no-pairs", "pairs-of-1-tile"])
@pytest.mark.parametrize("costs", [None, SKEWED_COSTS], ids=["costs-default", "costs-skewed"])
@pytest.mark.parametrize("case", PLAN_CASES, ids=lambda c: c.id)
def test_plan_emulation_matches_reference(case, costs, pairs, monkeypatch):
    """Every plan computes attention exactly, under the default tile costs and under others
    (ATTN_TK_PLAN_COSTS: they change the splits), with kv-split items paired or not."""
    if pairs:
        tiles, rows = pairs.split(",")
        monkeypatch.setenv("ATTN_TK_PAIR_TILES", tiles)
        monkeypatch.setenv("ATTN_TK_PAIR_ROWS", rows)
    if costs:
        for name, value in zip(("ROW_TILE_COST", "KV_TILE_COST", "ITEM_OVERHEAD"), costs):
            monkeypatch.setattr(plan, name, value)
    inp = case.inputs(torch.float64, "cpu")
    p = case.problem(inp)
    po, pl = (run_level_emulation if case.op == "shared_prefix" else run_chunk_emulation)(p)
    assert_states_match_reference(p, po, pl)


def test_pairs_are_adjacent_kv_items_of_equal_tiles_and_schedule_as_units(monkeypatch):
    items, _ = plan.level_plan(128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64, True, num_sms=132)
    paired = schedule.pair_kv_items(items, -1, -1)
    assert not (items[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)).any()  # input unmodified
    first = np.flatnonzero(paired[:, plan.F_FLAGS] & plan.FLAG_PAIR)
    assert len(first) > 0 and np.array_equal(np.flatnonzero(paired[:, plan.F_FLAGS] & plan.FLAG_PAIRED), first + 1)
    for i in first.tolist():
        a, b = paired[i], paired[i + 1]
        assert a[plan.F_FLAGS] & b[plan.F_FLAGS] & plan.FLAG_KV_SPLIT
        assert a[plan.F_TILE1] - a[plan.F_TILE0] == b[plan.F_TILE1] - b[plan.F_TILE0]
    rows = (paired[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT) == 0
    assert not (paired[rows, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)).any()
    # The schedule keeps each pair adjacent, in order, inside one CTA's range; a pair costs
    # its tiles plus one item's overhead.
    for mixed in (False, True):
        sched, offs = schedule.assign_ctas(paired, 132, mixed)
        assert sorted(map(tuple, sched.tolist())) == sorted(map(tuple, paired.tolist()))
        f = sched[:, plan.F_FLAGS]
        starts = np.flatnonzero(f & plan.FLAG_PAIR)
        assert np.array_equal(np.flatnonzero(f & plan.FLAG_PAIRED), starts + 1)
        cta = np.repeat(np.arange(len(offs) - 1), np.diff(offs))
        assert (cta[starts] == cta[starts + 1]).all()
    # Only short items with a cap; none with 0; one-tile items pair with each other only;
    # with a row cap of 16, tree-3level's 64-row level items stay alone.
    assert not (schedule.pair_kv_items(items, 0, -1)[:, plan.F_FLAGS] & plan.FLAG_PAIR).any()
    one = schedule.pair_kv_items(items, 1, -1)
    sel = (one[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)) != 0
    assert sel.any() and ((one[sel, plan.F_TILE1] - one[sel, plan.F_TILE0]) == 1).all()
    assert sel.sum() < ((paired[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)) != 0).sum()
    r16 = schedule.pair_kv_items(items, -1, 16)
    sel = (r16[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)) != 0
    rows64 = (items[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT).astype(bool) & (items[:, plan.F_NROWS] == 64)
    assert rows64.any() and not sel[rows64].any() and sel[~rows64].any()
    # By default: items of at most PAIR_MAX_TILES tiles (no-share's 32-tile items stay alone).
    assert np.array_equal(schedule.pair_kv_items(items), paired)
    ns, _ = plan.level_plan(64, 32, 8, [], 2048, False, num_sms=132)
    assert (ns[:, plan.F_TILE1] - ns[:, plan.F_TILE0] > schedule.PAIR_MAX_TILES).all()
    assert not (schedule.pair_kv_items(ns)[:, plan.F_FLAGS] & plan.FLAG_PAIR).any()
    assert (schedule.pair_kv_items(ns, -1)[:, plan.F_FLAGS] & plan.FLAG_PAIR).any()
    # A malformed table (a pair's second item missing) is refused, not run.
    bad = paired.copy()
    bad[first[0] + 1, plan.F_FLAGS] &= ~plan.FLAG_PAIRED
    with pytest.raises(ValueError, match="FLAG_PAIRED"):
        schedule.assign_ctas(bad, 132)
    two = schedule.pair_kv_items(plan.level_plan(2, 4, 4, [], 64, False, num_sms=132)[0])
    assert two.shape[0] == 8 and (two[::2, plan.F_FLAGS] & plan.FLAG_PAIR).all()
    _, offs = schedule.assign_ctas(two, 132)
    assert len(offs) - 1 == 4  # one CTA per pair, never one per item
    # Pair units cost PAIR_TILE_COST per tile + PAIR_OVERHEAD: on two CTAs, a pair of 4-tile
    # items (9.7 at the default, the lone items' costs; 8.47 at 0.88 and 1.43), lone items of
    # 4 and 2 tiles (5.7 + 3.7 = 9.4 on the other CTA): a lone 1-tile item then goes to the
    # CTA with less, the other one by default, the pair's at the cheaper pair costs.
    mix = plan.level_plan(5, 4, 4, [], 256, False, num_sms=132)[0][:5]  # items of 4 tiles
    mix = np.concatenate([schedule.pair_kv_items(mix[:2]), mix[2:]])
    mix[3, plan.F_TILE1], mix[4, plan.F_TILE1] = 2, 1

    def with_pair():
        sched, offs = schedule.assign_ctas(mix, 2, mixed=False)
        groups = [sched[offs[c]:offs[c + 1]] for c in range(2)]
        g = next(g for g in groups if (g[:, plan.F_FLAGS] & plan.FLAG_PAIR).any())
        return sorted(g[:, plan.F_TILE1].tolist())

    assert (plan.PAIR_TILE_COST, plan.PAIR_OVERHEAD) == (plan.KV_TILE_COST, plan.ITEM_OVERHEAD)
    assert with_pair() == [4, 4]
    monkeypatch.setattr(plan, "PAIR_TILE_COST", 0.88)
    monkeypatch.setattr(plan, "PAIR_OVERHEAD", 1.43)
    assert with_pair() == [1, 4, 4]


def test_cta_heads_copy_each_ctas_range_and_first_two_items():
    """schedule.cta_heads: what the launch puts in the kernel's parameters is each CTA's row
    range and its first two rows of the scheduled table (zeros where the CTA has one)."""
    items, _ = plan.level_plan(128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64, True, num_sms=132)
    sched, ctas = schedule.assign_ctas(schedule.pair_kv_items(items), 132)
    heads = schedule.cta_heads(sched, ctas)
    assert heads.dtype == np.int32 and heads.shape == (132, schedule.HEAD_INTS)
    n = plan.ITEM_INTS
    for c in range(132):
        a, b = int(ctas[c]), int(ctas[c + 1])
        assert heads[c, 0] == a and heads[c, 1] == b and np.array_equal(heads[c, 2:2 + n], sched[a])
        assert np.array_equal(heads[c, 2 + n:], sched[a + 1] if a + 1 < b else np.zeros(n, dtype=np.int32))
    # CTAs of one item each (8 lone items on 132 SMs): no second item.
    lone = plan.level_plan(2, 4, 4, [], 64, False, num_sms=132)[0]
    s1, c1 = schedule.assign_ctas(lone, 132)
    h1 = schedule.cta_heads(s1, c1)
    assert len(h1) == 8 and (h1[:, 2 + n:] == 0).all() and np.array_equal(h1[:, 2:2 + n], s1)
    assert schedule.cta_heads(sched[:0], np.zeros(1, dtype=np.int32)).shape == (0, schedule.HEAD_INTS)


def test_backend_plans_are_paired_scheduled_and_cached(monkeypatch):
    """level_items / chunk_items on the CPU (an SM count stood in): the plan's items, paired
    and scheduled, cached per shape and per environment (ATTN_TK_PAIR_TILES here)."""
    monkeypatch.delenv("ATTN_TK_PAIR_TILES", raising=False)
    monkeypatch.setenv("ATTN_TK_DECODE_WG", "0")  # one-list plans (two-list ones: test_tk_decode_streams)
    tk = tkb.TKBackend()
    monkeypatch.setattr(tk, "_num_sms", lambda device: 3)
    inp = make_inputs(W("", 12, 8, 2, ((1, 300),), 130, 64, ragged=True), torch.float32, "cpu", seed=5)
    p = shared_prefix_problem(*inp.args())
    items, ctas, nslot, direct, covered = tk.level_items(p)[:5]
    levels = [(k.shape[0], k.shape[1]) for k in p.prefix_k]
    want, want_slots = plan.level_plan(12, 8, 2, levels, p.suffix_capacity, True, num_sms=3)
    assert nslot == want_slots and not direct and int(ctas[-1]) == len(want)
    got = items.numpy().copy()
    assert covered  # every (slot, row) written: no -inf fill
    got[:, plan.F_FLAGS] &= ~np.int32(plan.FLAG_PAIR | plan.FLAG_PAIRED | plan.FLAG_CLEAR_NEXT)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist()))
    assert (items[:, plan.F_FLAGS] & plan.FLAG_PAIR).any()
    assert tk.level_items(p)[0] is items  # cached
    heads = tk.level_items(p)[5]
    assert heads.device.type == "cpu" and heads.dtype == torch.int32
    assert np.array_equal(heads.numpy(), schedule.cta_heads(items.numpy(), ctas.numpy()))
    monkeypatch.setenv("ATTN_TK_PAIR_TILES", "0")
    alone = tk.level_items(p)[0]
    assert alone is not items and not (alone[:, plan.F_FLAGS] & plan.FLAG_PAIR).any()
    ch = to_chunk_form(inp, 64, shuffle=True)
    cp = chunk_problem(*ch.args())
    c_items, c_ctas, clist, c_slots, c_direct, c_covered = tk.chunk_items(cp)[:6]
    assert tk.chunk_items(cp)[0] is c_items and int(c_ctas[-1]) == c_items.shape[0] > 0
    assert not (c_items[:, plan.F_FLAGS] & plan.FLAG_PAIR).any()  # ATTN_TK_PAIR_TILES=0 still set
    monkeypatch.delenv("ATTN_TK_PAIR_TILES")
    assert (tk.chunk_items(cp)[0][:, plan.F_FLAGS] & plan.FLAG_PAIR).any()


def test_pair_caps_from_the_environment(monkeypatch):
    monkeypatch.delenv("ATTN_TK_PAIR_TILES", raising=False)
    monkeypatch.delenv("ATTN_TK_PAIR_ROWS", raising=False)
    assert tkb.pair_caps() == (schedule.PAIR_MAX_TILES, schedule.PAIR_MAX_ROWS)
    monkeypatch.setenv("ATTN_TK_PAIR_TILES", "0")
    monkeypatch.setenv("ATTN_TK_PAIR_ROWS", "-1")
    assert tkb.pair_caps() == (0, -1)
    assert "pairs of kv-split items (max tiles, rows)" in tkb.TKBackend().versions()
    for name in ("ATTN_TK_PAIR_TILES", "ATTN_TK_PAIR_ROWS"):
        for bad in ("-2", "many"):
            monkeypatch.setenv(name, bad)
            with pytest.raises(ValueError, match=name):
                tkb.pair_caps()
            monkeypatch.setenv(name, "4")


def test_clear_unwritten_covers_the_spec_plans_and_only_unwritten_slots():
    """Paired and row-split items of two-slot splits clear slot + 1 only where no item writes
    it; the spec workloads' level plans are then covered (no -inf fill); a chunk table whose
    sequences own different numbers of slots is not."""
    for batch, hq, hkv, levels, suffix in [(128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64),
                                           (256, 32, 8, [(1, 8192)], 256), (1024, 8, 1, [(1, 2048)], 256),
                                           (32, 32, 32, [(1, 2048)], 256), (64, 32, 8, [(1, 32768)], 256)]:
        items, nslot = plan.level_plan(batch, hq, hkv, levels, suffix, True, num_sms=132)
        paired = schedule.pair_kv_items(items)
        out, covered = plan.clear_unwritten(paired, nslot, batch, hkv, hq // hkv)
        assert covered and out is not paired
        clear = (out[:, plan.F_FLAGS] & plan.FLAG_CLEAR_NEXT) != 0
        alone_kv = ((out[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT) != 0) & ((out[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)) == 0)
        assert not (clear & alone_kv).any()  # a lone kv-split item writes slot + 1 itself
        flags = plan.FLAG_PAIR | plan.FLAG_PAIRED
        np.testing.assert_array_equal(out[:, 1:], paired[:, 1:])
        np.testing.assert_array_equal(out[:, 0] & ~plan.FLAG_CLEAR_NEXT, paired[:, 0])
        assert ((out[clear, 0] & flags) != 0).any()
        # Without pairs every kv-split item writes both slots: only row-split items of a
        # two-slot split (none here but beside kv blocks) may need the flag.
        unpaired, covered = plan.clear_unwritten(items, nslot, batch, hkv, hq // hkv)
        assert covered and not ((unpaired[:, plan.F_FLAGS] & plan.FLAG_CLEAR_NEXT) != 0)[
            (unpaired[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT) != 0].any()
    items, nslot = plan.level_plan(64, 32, 8, [], 2048, True, num_sms=132)  # no-share
    direct, is_direct = plan.mark_direct(items, 64, 8, 4)
    assert is_direct and plan.clear_unwritten(direct, nslot, 64, 8, 4) == (direct, False)  # no partials
    # A chunk cache tree: its sequences own different numbers of slots.
    case = next(c for c in CASES if c.id == "chunk-cache-tree")
    p = case.problem(case.inputs(torch.float32, "cpu"))
    t, r = p.table, p.num_q_heads // p.num_kv_heads
    items, _, nslot = plan.chunk_plan(t.host, t.num_seqs, p.num_q_heads, p.num_kv_heads, p.chunk_size, num_sms=3)
    assert not plan.clear_unwritten(schedule.pair_kv_items(items), nslot, t.num_seqs, p.num_kv_heads, r)[1]


def test_mark_direct_only_when_every_row_is_in_one_item():
    # no-share: one decode item per (sequence, kv head), no split-K
    items, _ = plan.level_plan(64, 32, 8, [], 2048, False, num_sms=132)
    marked, direct = plan.mark_direct(items, 64, 8, 4)
    assert direct and (marked[:, plan.F_FLAGS] & plan.FLAG_DIRECT).all()
    assert not (items[:, plan.F_FLAGS] & plan.FLAG_DIRECT).any()  # the input is not modified
    assert (marked[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT).all()
    # one level, no suffix, no split: row-split items, each row once
    rows, _ = plan.level_plan(64, 32, 8, [(1, 256)], 0, False, num_sms=132)
    assert not (rows[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT).any()
    assert plan.mark_direct(rows, 64, 8, 4)[1]
    # rows with two states: a split suffix, a shared prefix plus a suffix
    assert not plan.mark_direct(plan.level_plan(2, 32, 8, [], 8192, False, num_sms=132)[0], 2, 8, 4)[1]
    assert not plan.mark_direct(plan.level_plan(64, 32, 8, [(1, 2048)], 256, False, num_sms=132)[0], 64, 8, 4)[1]
    # a row in no item (it would never be written), and a 64-row kv-split item (too big to exchange)
    assert not plan.mark_direct(items[1:], 64, 8, 4)[1]
    big, _ = plan.level_plan(16, 32, 8, [(1, 256)], 0, False, num_sms=132)
    assert (big[:, plan.F_NROWS] == 64).all() and not plan.mark_direct(big, 16, 8, 4)[1]
    assert not plan.mark_direct(items[:0], 64, 8, 4)[1]


def test_level_plan_splits_long_prefix():
    items, nslot = plan.level_plan(256, 32, 8, [(1, 8192)], 256, False, num_sms=132)
    prefix = items[items[:, plan.F_SRC] == 0]
    assert len(set(prefix[:, plan.F_TILE0].tolist())) > 1  # split along the prefix
    assert (prefix[:, plan.F_FLAGS] == 0).all()            # 1024 stacked rows: row-split blocks
    suffix = items[items[:, plan.F_SRC] == 1]
    assert (suffix[:, plan.F_FLAGS] == 1).all()            # decode: kv-split, two slots per split
    n_pre, n_suf = len(set(prefix[:, plan.F_TILE0].tolist())), len(set(suffix[:, plan.F_TILE0].tolist()))
    assert nslot == n_pre + plan.SLOTS_PER_SPLIT * n_suf
    assert prefix[:, plan.F_SLOT].max() < n_pre <= suffix[:, plan.F_SLOT].min()


def test_schedule_assigns_every_item_once_and_balances():
    items, _ = plan.level_plan(128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64, True, num_sms=132)
    sched, offs = schedule.assign_ctas(items, 132)
    assert offs[0] == 0 and offs[-1] == len(items) and (np.diff(offs) >= 1).all()
    assert sorted(map(tuple, sched.tolist())) == sorted(map(tuple, items.tolist()))
    weight = np.where(sched[:, plan.F_FLAGS] & 1, plan.KV_TILE_COST, plan.ROW_TILE_COST)
    cost = (sched[:, plan.F_TILE1] - sched[:, plan.F_TILE0]) * weight + plan.ITEM_OVERHEAD
    loads = [cost[offs[c]:offs[c + 1]].sum() for c in range(len(offs) - 1)]
    assert max(loads) <= cost.sum() / len(loads) + cost.max()
    few, offs2 = schedule.assign_ctas(items[:5], 132)
    assert len(offs2) == 6  # never more CTAs than items
    empty, offs3 = schedule.assign_ctas(items[:0], 132)
    assert offs3.tolist() == [0]


def test_rebalanced_schedule_lowers_the_largest_load_and_keeps_units(monkeypatch):
    items, _ = plan.level_plan(128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64, False, num_sms=132)
    items = schedule.pair_kv_items(items)

    def loads(sched, offs):
        fl = sched[:, plan.F_FLAGS]
        paired = (fl & plan.FLAG_PAIRED) != 0
        w = np.where((fl & plan.FLAG_PAIR) | paired, plan.PAIR_TILE_COST,
                     np.where(fl & plan.FLAG_KV_SPLIT, plan.KV_TILE_COST, plan.ROW_TILE_COST))
        t = (sched[:, plan.F_TILE1] - sched[:, plan.F_TILE0]) * w
        over = np.where(fl & plan.FLAG_PAIR, plan.PAIR_OVERHEAD, plan.ITEM_OVERHEAD)
        c = t + np.where(paired, 0.0, over)
        return np.asarray([c[offs[k]:offs[k + 1]].sum() for k in range(len(offs) - 1)]), c

    lpt, o1 = schedule.assign_ctas(items, 132, mixed=False)
    reb, o2 = schedule.assign_ctas(items, 132, mixed=False, rebalance=True)
    l1, _ = loads(lpt, o1)
    l2, unit_cost = loads(reb, o2)
    assert sorted(map(tuple, reb.tolist())) == sorted(map(tuple, items.tolist()))
    assert l2.sum() == pytest.approx(l1.sum()) and l2.max() < l1.max() - 1.0  # tree: 6 % -> 2 % over the mean
    f = reb[:, plan.F_FLAGS]
    starts = np.flatnonzero(f & plan.FLAG_PAIR)
    cta = np.repeat(np.arange(len(o2) - 1), np.diff(o2))
    assert np.array_equal(np.flatnonzero(f & plan.FLAG_PAIRED), starts + 1) and (cta[starts] == cta[starts + 1]).all()
    for k in range(len(o2) - 1):  # each CTA's units longest first again
        c = unit_cost[o2[k]:o2[k + 1]][(f[o2[k]:o2[k + 1]] & plan.FLAG_PAIRED) == 0]
        assert (np.diff(c) <= 1e-9).all(), k
    # mixed: the second half's lists reversed, as without rebalancing
    mixed, o3 = schedule.assign_ctas(items, 132, mixed=True, rebalance=True)
    assert o3.tolist() == o2.tolist() and np.array_equal(mixed[o3[0]:o3[1]], reb[o2[0]:o2[1]])
    # a balanced table has nothing to move; the switch is read from the environment
    even, _ = plan.level_plan(4, 4, 4, [], 64, False, num_sms=132)
    assert np.array_equal(schedule.assign_ctas(even, 4, rebalance=True)[0], schedule.assign_ctas(even, 4)[0])
    monkeypatch.delenv("ATTN_TK_REBALANCE", raising=False)
    assert not tkb.rebalance()
    monkeypatch.setenv("ATTN_TK_REBALANCE", "1")
    assert tkb.rebalance() and "schedule" in tkb.TKBackend().versions()


def test_mixed_schedule_runs_half_of_the_ctas_shortest_first(monkeypatch):
    items, _ = plan.level_plan(32, 32, 8, [(1, 2048)], 512, False, num_sms=16)
    lpt, offs = schedule.assign_ctas(items, 16, mixed=False)
    mixed, offs_m = schedule.assign_ctas(items, 16, mixed=True)
    assert offs.tolist() == offs_m.tolist()  # the same assignment, only the order differs
    weight = np.where(lpt[:, plan.F_FLAGS] & 1, plan.KV_TILE_COST, plan.ROW_TILE_COST)
    for c in range(16):
        a, b = offs[c], offs[c + 1]
        cost = (lpt[a:b, plan.F_TILE1] - lpt[a:b, plan.F_TILE0]) * weight[a:b]
        assert (np.diff(cost) <= 0).all()  # LPT: each CTA longest first
        want = lpt[a:b] if c < 8 else lpt[a:b][::-1]
        assert np.array_equal(mixed[a:b], want), c
    # A CTA of the second half starts with a kv-split (decode) item while the first half's
    # start with row-split (prefix) items: both kinds of work run at once.
    assert not (mixed[offs[0], plan.F_FLAGS] & 1) and (mixed[offs[8], plan.F_FLAGS] & 1)
    monkeypatch.setenv("ATTN_TK_ORDER", "lpt")
    assert not tkb.mixed_order()
    monkeypatch.setenv("ATTN_TK_ORDER", "mixed")
    assert tkb.mixed_order()


def test_plan_costs_from_the_environment():
    """ATTN_TK_PLAN_COSTS (a tuning knob of bench/tk_variants.sh): parsed, or a clear error."""
    assert plan.costs_from_env(None) == plan.DEFAULT_COSTS
    assert plan.costs_from_env("") == plan.DEFAULT_COSTS
    assert plan.costs_from_env("1.2,0.5,0") == (1.2, 0.5, 0.0, 0.5, 0.0)  # pairs: the lone items' costs
    assert plan.costs_from_env("1.2,0.5,0,0.7,1") == (1.2, 0.5, 0.0, 0.7, 1.0)
    for bad in ("1,2", "a,b,c", "0,1,1", "1,-1,1", "1,1,-1", "1,nan,1", "1,1,1,0,1", "1,1,1,1,-1",
                "1,1,1,1", "1,1,1,1,1,1"):
        with pytest.raises(ValueError, match="ATTN_TK_PLAN_COSTS"):
            plan.costs_from_env(bad)


def test_split_factor_from_the_environment_changes_the_splits(monkeypatch):
    assert plan.split_factor_from_env(None) == 2.0 and plan.split_factor_from_env("3.5") == 3.5
    for bad in ("0", "-1", "x", "inf"):
        with pytest.raises(ValueError, match="ATTN_TK_SPLIT_FACTOR"):
            plan.split_factor_from_env(bad)
    base, base_slots = plan.level_plan(256, 32, 8, [(1, 8192)], 256, False, num_sms=132)
    monkeypatch.setattr(plan, "SPLIT_FACTOR", 4.0)
    finer, finer_slots = plan.level_plan(256, 32, 8, [(1, 8192)], 256, False, num_sms=132)
    assert finer.shape[0] > base.shape[0] and finer_slots > base_slots
    monkeypatch.setenv("ATTN_TK_SPLIT_FACTOR", "4")
    assert tkb.TKBackend().versions()["plan split factor (items per CTA share)"] == "4 (not chosen per plan)"


def test_backend_chooses_the_split_factor_per_shape(monkeypatch):
    """Of plan.AUTO_SPLIT_FACTORS the backend keeps, per shape, the plan with the smallest
    largest planned CTA load (within SPLIT_TOLERANCE, then the fewest slots): on 132 SMs
    tree-3level and gqa-8b plan one slot fewer than at the fixed factor 2, gqa-8b-long keeps
    2 (1.5 would leave 176 prefix items on 132 CTAs). ATTN_TK_SPLIT_FACTOR fixes it."""
    import types

    monkeypatch.delenv("ATTN_TK_SPLIT_FACTOR", raising=False)
    monkeypatch.delenv("ATTN_TK_DECODE_WG", raising=False)  # the default (auto), also under a forced form
    monkeypatch.setenv("ATTN_TK_WALK", "0")  # the plans with suffix items (walked ones: test_tk_walk)
    tk = tkb.TKBackend()
    monkeypatch.setattr(tk, "_num_sms", lambda device: 132)

    def shape(batch, hq, hkv, levels, suffix):
        return types.SimpleNamespace(batch=batch, num_q_heads=hq, num_kv_heads=hkv, suffix_capacity=suffix,
                                     prefix_k=[torch.empty(g, n, 1, 1) for g, n in levels], suffix_lens=None,
                                     device=torch.device("cpu"))

    for args, factor in [((128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64), 1.5),
                         ((256, 32, 8, [(1, 8192)], 256), 1.5), ((64, 32, 8, [(1, 32768)], 256), 2.0)]:
        items, ctas, nslot, direct, covered = tk.level_items(shape(*args))[:5]
        want, want_slots = plan.level_plan(*args, False, 132, factor)
        fixed = plan.level_plan(*args, False, 132, 2.0)[1]
        assert nslot == want_slots and items.shape[0] == want.shape[0] and covered
        assert (nslot < fixed) == (factor != 2.0)
        loads = schedule.planned_loads(items.numpy(), ctas.numpy())
        assert loads.sum() == pytest.approx(schedule.unit_costs(items.numpy())[2].sum())
    monkeypatch.setenv("ATTN_TK_SPLIT_FACTOR", "2")
    assert tkb.split_factors() == (plan.SPLIT_FACTOR,)
