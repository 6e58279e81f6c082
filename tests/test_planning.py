"""Host-side planning in numpy against one-at-a-time definitions.

A serving loop builds a ChunkTable, and the tk backend plans it, every decode step, so both
are vectorised (session 14: gqa-8b's table 49 -> 5 ms, its tk plan 45 -> 11 ms on the dev
CPU). Each vectorised step here is checked against the loop it replaced, on random inputs
with the ties and edge cases the loops resolve in a particular order (CPU only, no kernel).
"""
from __future__ import annotations

import heapq

import numpy as np
import pytest
import torch

from attn.table import ChunkTable
from attn.tk_ext import plan, schedule
from attn.workloads import Workload, make_inputs, to_chunk_form


def lpt_heap(cost, ctas):
    """Longest first, each unit to the least loaded CTA (ties: lower index), one at a time."""
    order = np.argsort(-cost, kind="stable")
    heap = [(0.0, c) for c in range(ctas)]
    lists = [[] for _ in range(ctas)]
    for u in order.tolist():
        load, c = heapq.heappop(heap)
        lists[c].append(u)
        heapq.heappush(heap, (load + cost[u], c))
    return lists


@pytest.mark.parametrize("seed", range(12))
def test_lpt_batches_equal_costs_as_a_heap_would(seed):
    rng = np.random.default_rng(seed)
    n, ctas = int(rng.integers(1, 400)), int(rng.integers(1, 40))
    # few distinct costs (long runs of ties), some zero, some equal to sums of others
    cost = rng.choice(np.array([0.0, 1.0, 1.7, 2.7, 3.4, 5.25]), size=n)
    order = np.argsort(-cost, kind="stable")
    cta, rank = schedule._lpt(cost[order], ctas)
    got = [[] for _ in range(ctas)]
    for pos in np.lexsort((rank, cta)).tolist():
        got[cta[pos]].append(int(order[pos]))
    assert got == lpt_heap(cost, ctas)


def pair_loop(items, max_tiles, max_rows):
    out = items.copy()
    ntiles = out[:, plan.F_TILE1] - out[:, plan.F_TILE0]
    ok = (out[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT) != 0
    if max_tiles >= 0:
        ok &= ntiles <= max_tiles
    if max_rows >= 0:
        ok &= out[:, plan.F_NROWS] - out[:, plan.F_ROW0] <= max_rows
    i = 0
    while i + 1 < len(out):
        if ok[i] and ok[i + 1] and ntiles[i] == ntiles[i + 1]:
            out[i, plan.F_FLAGS] |= plan.FLAG_PAIR
            out[i + 1, plan.F_FLAGS] |= plan.FLAG_PAIRED
            i += 2
        else:
            i += 1
    return out


@pytest.mark.parametrize("seed", range(8))
def test_pairing_is_greedy_from_the_front(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 60))
    items = np.zeros((n, plan.ITEM_INTS), dtype=np.int32)
    items[:, plan.F_FLAGS] = rng.integers(0, 2, n) | (rng.random(n) < 0.7)  # mostly kv-split
    items[:, plan.F_TILE1] = rng.choice([1, 4, 4, 4, 20], n)
    items[:, plan.F_NROWS] = rng.choice([4, 16, 64], n)
    for caps in [(16, -1), (-1, -1), (0, -1), (16, 8)]:
        assert np.array_equal(schedule.pair_kv_items(items, *caps), pair_loop(items, *caps)), caps


def rows_reference(items, hkv, r):
    """``_item_rows`` as [n, 128] places, as the first vectorised version had them."""
    it = items.astype(np.int64)
    kv = (it[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT) != 0
    row0 = it[:, plan.F_ROW0, None]
    j = row0 + np.arange(plan.BLOCK_ROWS)[None, :]
    real = j < np.minimum(it[:, plan.F_NROWS, None], row0 + np.where(kv, plan.TILE, plan.BLOCK_ROWS)[:, None])
    return ((it[:, plan.F_SEQ0, None] + j // r) * hkv + it[:, plan.F_HEAD, None]) * r + j % r, real


SHAPES = [  # batch, hq, hkv, levels, suffix
    (40, 8, 2, [(1, 600), (4, 200)], 90),
    (8, 8, 8, [], 100),
    (128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64),
    (50, 8, 2, [(1, 700), (5, 130)], 150),
]


@pytest.mark.parametrize("shape", SHAPES, ids=["two-level", "no-share", "tree", "rows200"])
def test_item_rows_and_cleared_slots_match_the_dense_form(shape):
    batch, hq, hkv, levels, suffix = shape
    r = hq // hkv
    items, nslot = plan.level_plan(batch, hq, hkv, levels, suffix, True, 7)
    items = schedule.pair_kv_items(items)
    item, rows = plan._item_rows(items, hkv, r)
    dense, real = rows_reference(items, hkv, r)
    assert np.array_equal(item, np.nonzero(real)[0]) and np.array_equal(rows, dense[real])
    # clear_unwritten: an item clears slot + 1 exactly where no item writes it
    out, covered = plan.clear_unwritten(items, nslot, batch, hkv, r)
    if nslot == 0:
        return
    rt = batch * hq
    written = np.zeros((nslot, rt), dtype=bool)
    slot = items[:, plan.F_SLOT]
    lone = ((items[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT) != 0) & \
        ((items[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)) == 0)
    for i in range(len(items)):
        written[slot[i], dense[i][real[i]]] = True
        if lone[i]:
            written[slot[i] + 1, dense[i][real[i]]] = True
    cleared = (out[:, plan.F_FLAGS] & plan.FLAG_CLEAR_NEXT) != 0
    for i in range(len(items)):
        want = (not lone[i] and slot[i] + 1 < nslot and not written[slot[i] + 1, dense[i][real[i]]].any())
        assert cleared[i] == want, i
    for i in np.flatnonzero(cleared):
        written[slot[i] + 1, dense[i][real[i]]] = True
    assert covered == bool(written.all())


def table_reference(sc, cl):
    """ChunkTable's derived arrays, a sequence and a chunk at a time."""
    first, last, count = {}, {}, {}
    for row in range(sc.shape[0]):
        for c in sc[row][sc[row] >= 0].tolist():
            first.setdefault(c, row)
            last[c] = row
            count[c] = count.get(c, 0) + 1
    sh = [c for _, c in sorted((first[c], c) for c in count if count[c] >= 2)]
    m_of = {c: m for m, c in enumerate(sh)}
    rows = [sc[n][sc[n] >= 0].tolist() for n in range(sc.shape[0])]
    priv = [[c for c in row if c not in m_of] for row in rows]
    shrd = [[m_of[c] for c in row if c in m_of] for row in rows]

    def padded(lists):
        out = np.full((len(lists), max([len(x) for x in lists] + [0])), -1, dtype=np.int64)
        for i, x in enumerate(lists):
            out[i, :len(x)] = x
        return out
    return sh, [first[c] for c in sh], [last[c] + 1 for c in sh], padded(priv), padded(shrd)


@pytest.mark.parametrize("chunk,shuffle", [(16, False), (64, True), (192, True)])
def test_table_derives_what_the_loops_did(chunk, shuffle):
    w = Workload("t", 24, 8, 2, ((1, 300), (3, 130), (6, 40)), 70, 8, ragged=True)
    t = to_chunk_form(make_inputs(w, torch.float16, "cpu", seed=2), chunk, shuffle=shuffle, seed=2).table
    sc, cl = t.host["seq_chunks"], t.host["chunk_lens"]
    sh, sb, se, pv, ss = table_reference(sc, cl)
    t2 = ChunkTable.from_seq_chunks(sc, cl)
    for tab in (t, t2):
        assert tab.host["shared_chunks"].tolist() == sh
        assert tab.host["shared_begin"].tolist() == sb and tab.host["shared_end"].tolist() == se
        assert np.array_equal(tab.host["private_chunks"], pv) and np.array_equal(tab.host["seq_shared"], ss)
        assert np.array_equal(tab.private_chunks.numpy(), pv)


def test_table_reports_the_first_bad_row_and_chunk():
    # two rows read a chunk twice: the first is named; two chunks shared by a gap: the one a
    # row-major scan meets first (chunk 3 in row 0) is named, with every row that reads it
    with pytest.raises(ValueError, match=r"row 1 reads a chunk twice: \[2, 2\]"):
        ChunkTable.from_seq_chunks([[0, 1], [2, 2], [4, 4]], [1] * 5)
    with pytest.raises(ValueError, match=r"chunk 3 is shared by sequences \[0, 2\]"):
        ChunkTable.from_seq_chunks([[3, 1], [0, 2], [3, 1]], [1] * 4)


def test_unpair_last_breaks_the_last_pairs_only():
    items, _ = plan.level_plan(128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64, False, 132)
    paired = schedule.pair_kv_items(items)
    first = np.flatnonzero(paired[:, plan.F_FLAGS] & plan.FLAG_PAIR)
    out = schedule.unpair_last(paired, 5)
    assert np.array_equal(np.flatnonzero(out[:, plan.F_FLAGS] & plan.FLAG_PAIR), first[:-5])
    assert np.array_equal(np.flatnonzero(out[:, plan.F_FLAGS] & plan.FLAG_PAIRED), first[:-5] + 1)
    assert np.array_equal(schedule.unpair_last(paired, 0), paired)
    assert not (schedule.unpair_last(paired, 10 ** 6)[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)).any()
    schedule.unit_costs(out)  # still well formed


def test_backend_unpairs_the_tail_where_the_plan_says_it_evens_the_ctas(monkeypatch):
    """tree-3level on 132 SMs: its last pairs as lone items lower the largest planned CTA load
    (41.5 -> 40.5 kv tiles); ATTN_TK_UNPAIR=0 keeps every pair. hydragen-mqa gains nothing and
    keeps its pairs."""
    import types

    from attn.tk_ext import backend as tkb

    def shape(batch, hq, hkv, levels, suffix):
        return types.SimpleNamespace(batch=batch, num_q_heads=hq, num_kv_heads=hkv, suffix_capacity=suffix,
                                     prefix_k=[torch.empty(g, n, 1, 1) for g, n in levels], suffix_lens=None,
                                     device=torch.device("cpu"))

    def placed(unpair, args):
        monkeypatch.setenv("ATTN_TK_UNPAIR", unpair)
        monkeypatch.setenv("ATTN_TK_WALK", "0")  # tree-3level's plan with suffix items (its walked one: test_tk_walk)
        tk = tkb.TKBackend()
        monkeypatch.setattr(tk, "_num_sms", lambda device: 132)
        items, ctas, nslot, direct, covered = tk.level_items(shape(*args))[:5]
        items, ctas = items.numpy(), ctas.numpy()
        return (int(np.count_nonzero(items[:, plan.F_FLAGS] & plan.FLAG_PAIR)),
                float(schedule.planned_loads(items, ctas).max()), covered, nslot)

    tree = (128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64)
    (p0, l0, c0, s0), (p1, l1, c1, s1) = placed("0", tree), placed("1", tree)
    assert p1 < p0 and l1 < l0 * (1 - plan.SPLIT_TOLERANCE) and c0 and c1 and s0 == s1
    hydragen = (1024, 8, 1, [(1, 2048)], 256)
    assert placed("1", hydragen) == placed("0", hydragen)


@pytest.mark.parametrize("shape", SHAPES, ids=["two-level", "no-share", "tree", "rows200"])
@pytest.mark.parametrize("unpair", ["0", "1"])
def test_covered_plans_count_every_row_to_nslot(shape, unpair, monkeypatch):
    """What a covered plan promises (the partial lses then start uninitialised, with no -inf
    fill): every row receives exactly nslot state writes, counted as the kernel writes them (a
    lone kv-split item's two warpgroups write slot and slot + 1; any other item writes its
    slot, and slot + 1 too when it has FLAG_CLEAR_NEXT), so no (slot, row) is left unwritten
    and none is written twice."""
    import types

    from attn.tk_ext import backend as tkb

    batch, hq, hkv, levels, suffix = shape
    monkeypatch.setenv("ATTN_TK_UNPAIR", unpair)
    tk = tkb.TKBackend()
    monkeypatch.setattr(tk, "_num_sms", lambda device: 132)
    p = types.SimpleNamespace(batch=batch, num_q_heads=hq, num_kv_heads=hkv, suffix_capacity=suffix,
                              prefix_k=[torch.empty(g, n, 1, 1) for g, n in levels], suffix_lens=None,
                              device=torch.device("cpu"))
    items, _, nslot, direct, covered = tk.level_items(p)[:5]
    items = items.numpy()
    if direct or not covered:
        return
    flags = items[:, plan.F_FLAGS]
    lone = ((flags & plan.FLAG_KV_SPLIT) != 0) & ((flags & (plan.FLAG_PAIR | plan.FLAG_PAIRED)) == 0)
    states = np.where(lone, 2, 1 + ((flags & plan.FLAG_CLEAR_NEXT) != 0))
    item, rows = plan._item_rows(items, hkv, hq // hkv)
    count = np.bincount(rows, weights=states[item], minlength=batch * hq)
    assert count.size == batch * hq and (count == nslot).all()


@pytest.mark.parametrize("chunk", [64, 128])
def test_covered_chunk_plans_count_every_row_to_nslot(chunk, monkeypatch):
    from attn.problems import chunk_problem
    from attn.tk_ext import backend as tkb

    tk = tkb.TKBackend()
    monkeypatch.setattr(tk, "_num_sms", lambda device: 132)
    checked = 0
    for w in (Workload("a", 40, 8, 2, ((1, 600), (4, 200)), 90, 8, ragged=True),
              Workload("b", 128, 32, 8, ((1, 2048), (8, 512), (32, 128)), 64, 8),
              Workload("c", 24, 8, 2, ((1, 300), (3, 130), (6, 40)), 70, 8, ragged=True)):
        p = chunk_problem(*to_chunk_form(make_inputs(w, torch.float16, "cpu", seed=3), chunk, shuffle=True,
                                         seed=3).args())
        items, _, _, nslot, direct, covered = tk.chunk_items(p)[:6]
        if direct or not covered:
            continue
        items = items.numpy()
        flags = items[:, plan.F_FLAGS]
        lone = ((flags & plan.FLAG_KV_SPLIT) != 0) & ((flags & (plan.FLAG_PAIR | plan.FLAG_PAIRED)) == 0)
        states = np.where(lone, 2, 1 + ((flags & plan.FLAG_CLEAR_NEXT) != 0))
        item, rows = plan._item_rows(items, w.kv_heads, w.q_heads // w.kv_heads)
        count = np.bincount(rows, weights=states[item], minlength=p.table.num_seqs * w.q_heads)
        assert (count == nslot).all(), w.name
        checked += 1
    assert checked >= 1


def test_plan_constants_match_the_kernel_headers():
    """The host plan and the kernels share an item layout and its constants, written once in
    Python (plan.py, schedule.py, backend.py) and once in CUDA (csrc/): the fields and flags of
    an item, its size, the CTA heads, the tile and warpgroup sizes, the direct rows and the
    source count. A change on one side only would still compile and run, with wrong items."""
    import re
    from pathlib import Path

    from attn.tk_ext import backend as tkb
    from attn.tk_ext import build

    src = "\n".join(p.read_text() for p in sorted(Path(build.CSRC).glob("*.cu*")))

    def const(name):
        found = re.findall(rf"constexpr int {name} = (\d+);", src)
        assert len(found) == 1, f"{name}: {found}"
        return int(found[0])

    def enum(name):
        body = re.search(rf"enum {name} \{{(.*?)\}};", src, re.S).group(1)
        body = re.sub(r"//[^\n]*", "", body)
        return {k: int(v) for k, v in re.findall(r"(\w+) = (\d+)", body)}

    fields = enum("ItemField")
    assert fields == {n: getattr(plan, n) for n in fields} and len(fields) == 12 == plan.ITEM_INTS
    for name in ("WALK_SRC_BITS", "WALK_RAGGED", "WALK_CAP_SHIFT"):  # F_WALK's packing
        assert const(name) == getattr(plan, name), name
    assert tkb.MAX_SOURCES <= 1 << plan.WALK_SRC_BITS <= plan.WALK_RAGGED < 1 << plan.WALK_CAP_SHIFT
    flags = enum("ItemFlag")
    assert flags == {n: getattr(plan, n) for n in flags} and set(flags) >= {"FLAG_KV_SPLIT", "FLAG_CLEAR_NEXT"}
    assert const("ITEM_INTS") == plan.ITEM_INTS and const("TILE") == plan.TILE and const("NWG") == plan.NWG
    assert const("DIRECT_ROWS") == plan.DIRECT_KV_ROWS and const("MAX_SRC") == tkb.MAX_SOURCES
    assert const("DEC_ROWS") == plan.DEC_ROWS and "FLAG_SOLO" in flags
    # cta_heads: per CTA its range (2 ints) and its first two items, as schedule.cta_heads packs them.
    assert re.search(r"int range\[HEAD_CTAS\]\[2\];", src) and re.search(r"int item\[HEAD_CTAS\]\[2\]\[ITEM_INTS\];", src)
    assert schedule.HEAD_INTS == 2 + 2 * const("ITEM_INTS")
