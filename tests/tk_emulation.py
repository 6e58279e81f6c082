"""A float64 emulation of the tk kernels' items, for the CPU tests of the tk backend.

:func:`emulate_items` executes a plan's work items (each item's rows, tiles and slot, as the
kernels split them) with exact softmax attention, so that a plan is checked by the results it
produces; :class:`EmulatedExt` puts it behind the extension's entry points, so that the
backend's marshalling runs end to end without a GPU.
"""
from __future__ import annotations

import math
import random

import pytest
import torch

from attn.tk_ext import backend as tkb
from attn.tk_ext import plan, schedule, unit_queue
from attn.torch_backend import merge
from attn.workloads import Workload, make_inputs, to_chunk_form
from cases import CASES

W = Workload


def emulate_items(q, items, nslot, rows_total, hq, r, d, keys_of, scale, covered):
    """Partial states of ``items`` for queries ``q`` [B, Hq, D]; ``keys_of(item, t)`` gives tile
    ``t``'s (k, v, valid).
    A covered plan's lses start as NaN, as the kernel finds them (no ``-inf`` fill): a
    (slot, row) that no item writes poisons the merge."""
    q64 = q.double()
    po = torch.zeros(nslot, rows_total, d, dtype=torch.float64)
    pl = torch.full((nslot, rows_total), float("nan") if covered else float("-inf"), dtype=torch.float64)
    written = set()
    owner = {}  # row -> item (a direct plan: exactly one item per row)
    for n_it, it in enumerate(items.tolist()):
        flags, _, _, h, seq0, nrows, row0, t0, t1 = it[:9]
        kv = flags & plan.FLAG_KV_SPLIT
        paired = flags & (plan.FLAG_PAIR | plan.FLAG_PAIRED | plan.FLAG_SOLO)  # one warpgroup, one slot
        slot = it[plan.F_SLOT]
        ntiles = keys_of(it, None)
        for w in range(plan.NWG):
            if paired:  # one warpgroup, every tile, one slot
                if w:
                    continue
                rows, tiles, sl = range(row0, min(row0 + plan.TILE, nrows)), range(ntiles), slot
            elif kv:
                rows, tiles, sl = range(row0, min(row0 + plan.TILE, nrows)), range(w, ntiles, plan.NWG), slot + w
            else:
                lo = row0 + w * plan.TILE
                rows, tiles, sl = range(lo, min(lo + plan.TILE, nrows)), range(ntiles), slot
            ks, vs, sels = [], [], []
            for t in tiles:
                k, v, valid, *sel = keys_of(it, t)
                if valid > 0:
                    ks.append(k[:valid])
                    vs.append(v[:valid])
                    sels.append(sel[0] if sel else None)  # a walked suffix tile: its sequence's rows only
            # The kernel's online softmax needs a finite max in every row from the first tile on.
            assert not sels or sels[0] is None, "a warpgroup's first tile must have keys for every row"
            for j in rows:
                mine = [i for i, sl_ in enumerate(sels) if sl_ is None or sl_ == j // r]
                b, hh = seq0 + j // r, h * r + j % r
                g = b * hq + hh
                assert (sl, g) not in written, "two items write one (slot, row)"
                written.add((sl, g))
                if it[plan.F_FLAGS] & plan.FLAG_DIRECT:
                    assert owner.setdefault(g, n_it) == n_it, "a direct plan with two items on one row"
                pl[sl, g] = float("-inf")  # an item with no keys writes -inf
                if flags & plan.FLAG_CLEAR_NEXT:
                    assert (sl + 1, g) not in written, "FLAG_CLEAR_NEXT on a (slot, row) an item writes"
                    written.add((sl + 1, g))
                    pl[sl + 1, g] = float("-inf")
                if mine:
                    s = torch.cat([ks[i] for i in mine]) @ q64[b, hh] * scale
                    pl[sl, g] = torch.logsumexp(s, 0)
                    po[sl, g] = torch.softmax(s, 0) @ torch.cat([vs[i] for i in mine])
    return po, pl


def assert_states_match_reference(p, po, pl):
    """The merged partial states ``po``, ``pl`` of an emulated plan equal the float64 reference
    of ``p`` (out to 1e-10, and lse where finite; -inf exactly where the reference has it)."""
    from attn.reference import reference

    out, lse = merge(po, pl)
    ref_out, ref_lse = reference(p)
    b, hq = p.q.shape[:2]
    assert torch.allclose(out.view(b, hq, -1), ref_out, atol=1e-10, rtol=0)
    both = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse.view(b, hq)), both)
    assert torch.allclose(lse.view(b, hq)[~both], ref_lse[~both], atol=1e-10, rtol=0)


def run_level_emulation(p, walk=False):
    levels = [(k.shape[0], k.shape[1]) for k in p.prefix_k]
    items, nslot = plan.level_plan(p.batch, p.num_q_heads, p.num_kv_heads, levels, p.suffix_capacity,
                                   p.suffix_lens is not None, num_sms=3, walk=walk)
    items, _ = plan.mark_direct(items, p.batch, p.num_kv_heads, p.num_q_heads // p.num_kv_heads)
    items, covered = plan.clear_unwritten(schedule.pair_kv_items(items, *tkb.pair_caps()), nslot, p.batch,
                                          p.num_kv_heads, p.num_q_heads // p.num_kv_heads)
    items, _ = schedule.assign_ctas(items, 3)
    srcs = list(zip(p.prefix_k, p.prefix_v))
    if p.suffix_capacity:
        srcs.append((p.suffix_k, p.suffix_v))
    keys_of = level_keys(srcs, p.suffix_lens)
    b, hq, d = p.q.shape
    return emulate_items(p.q, items, nslot, b * hq, hq, hq // p.num_kv_heads, d, keys_of, p.scale, covered)


def level_keys(srcs, suffix_lens):
    """``keys_of`` of level-mode items: ``srcs`` the (k, v) of each source, ``[G, P, Hkv, D]``
    (``[B, S, Hkv, D]`` for the suffix; a one-group level may come as ``[P, Hkv, D]``)."""
    lens = suffix_lens.tolist() if suffix_lens is not None else None

    def keys_of(it, t):
        _, src, gidx, h = it[:4]
        kl = it[plan.F_KEYLEN] if it[plan.F_KEYLEN] >= 0 else lens[gidx]
        walk = it[plan.F_WALK]
        if t is None:
            if walk:  # every walked tile, as the kernel counts them: ragged ones past a length are empty
                return it[plan.F_TILE1] - it[plan.F_TILE0]
            return max(0, min(it[plan.F_TILE1], math.ceil(kl / plan.TILE)) - it[plan.F_TILE0])
        own = math.ceil(kl / plan.TILE) - it[plan.F_TILE0]
        if walk and t >= own:  # tile u of the walk: tile u % spt of sequence seq0 + u // spt's suffix
            s_cap = walk >> plan.WALK_CAP_SHIFT
            spt = math.ceil(s_cap / plan.TILE)
            u = t - own
            seq, lo = it[plan.F_SEQ0] + u // spt, (u % spt) * plan.TILE
            k, v = srcs[walk & ((1 << plan.WALK_SRC_BITS) - 1)]
            s_len = lens[seq] if walk & plan.WALK_RAGGED else s_cap
            return (k[seq, lo:lo + plan.TILE, h].double(), v[seq, lo:lo + plan.TILE, h].double(), s_len - lo,
                    u // spt)
        k, v = srcs[src]
        if k.dim() == 3:
            k, v = k[None], v[None]
        lo = (it[plan.F_TILE0] + t) * plan.TILE
        return k[gidx, lo:lo + plan.TILE, h].double(), v[gidx, lo:lo + plan.TILE, h].double(), kl - lo

    return keys_of


def chunk_keys(k_chunks, v_chunks, clist, chunk_lens):
    """``keys_of`` of chunk-mode items over the pool ``[N, Hkv, C, D]`` and the items' chunk list."""
    tpc = math.ceil(k_chunks.shape[2] / plan.TILE)
    lens = [int(x) for x in chunk_lens]

    def keys_of(it, tt):
        if tt is None:
            return it[plan.F_TILE1] - it[plan.F_TILE0]
        g = it[plan.F_TILE0] + tt
        c = int(clist[it[plan.F_GIDX] + g // tpc])
        lo = (g % tpc) * plan.TILE
        h = it[plan.F_HEAD]
        return k_chunks[c, h, lo:lo + plan.TILE].double(), v_chunks[c, h, lo:lo + plan.TILE].double(), lens[c] - lo

    return keys_of


def run_chunk_emulation(p):
    t = p.table
    items, clist, nslot = plan.chunk_plan(t.host, t.num_seqs, p.num_q_heads, p.num_kv_heads, p.chunk_size, num_sms=3)
    items, _ = plan.mark_direct(items, t.num_seqs, p.num_kv_heads, p.num_q_heads // p.num_kv_heads)
    items, covered = plan.clear_unwritten(schedule.pair_kv_items(items, *tkb.pair_caps()), nslot, t.num_seqs,
                                          p.num_kv_heads, p.num_q_heads // p.num_kv_heads)
    items, _ = schedule.assign_ctas(items, 3)
    keys_of = chunk_keys(p.k_chunks, p.v_chunks, clist, t.host["chunk_lens"])
    n, hq, d = p.q.shape
    return emulate_items(p.q, items, nslot, n * hq, hq, hq // p.num_kv_heads, d, keys_of, p.scale, covered)


PLAN_CASES = [c for c in CASES if not c.gpu_only] + [
    # Forces row-split blocks (> 64 stacked rows), a partial last block, and split-K.
    pytest.param(type(CASES[0])("rows200-split", "shared_prefix",
                                lambda dt, dev: make_inputs(W("", 50, 8, 2, ((1, 700), (5, 130)), 150, 64, ragged=True),
                                                            dt, dev, seed=3))),
    pytest.param(type(CASES[0])("chunk128-rows", "chunk",
                                lambda dt, dev: to_chunk_form(make_inputs(W("", 40, 8, 2, ((1, 600), (4, 200)), 90, 64,
                                                                            ragged=True), dt, dev, seed=4), 128, shuffle=True))),
]


# Trees whose leaf items walk their sequences' suffixes (ATTN_TK_WALK=1) at every split factor.
# Leaves of 2 sequences (8 rows) and 2 tiles, ragged suffixes of 3 tiles (some past their lengths);
# leaves of 4 sequences and 2 tiles, one-tile suffixes.
PLAN_CASES += [
    type(CASES[0])("tree-walk-ragged", "shared_prefix",
                   lambda dt, dev: make_inputs(W("", 16, 8, 2, ((1, 200), (8, 100)), 150, 64, ragged=True), dt, dev, seed=13)),
    type(CASES[0])("tree-walk-d128", "shared_prefix",
                   lambda dt, dev: make_inputs(W("", 8, 8, 2, ((1, 64), (2, 100)), 64, 128), dt, dev, seed=14)),
]


class EmulatedExt:
    """The extension's entry points on the CPU: each launch's items emulated in float64
    (:func:`emulate_items`), so that the backend's own marshalling (argument order, the
    item table and CTA heads it passes, the buffers it allocates, the merge it calls) runs
    end to end without a GPU. Launch arguments are checked as the bindings check them."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def _check_launch(q, items, ctas, po, pl, out, lse, heads, dwg=False):
        b, hq, d = q.shape
        assert q.is_contiguous() and items.dtype == torch.int32 and items.shape[1] == plan.ITEM_INTS
        assert ctas.dtype == torch.int32 and ctas.dim() == 1 and int(ctas[-1]) == items.shape[0]
        solo = bool((items[:, plan.F_FLAGS] & plan.FLAG_SOLO).any())
        assert solo == dwg  # solo items only ever go to the decode-warpgroup kernels, and they always get some
        if dwg:  # two lists a CTA: its decode list holds exactly its solo items
            o = ctas.tolist()
            assert len(o) % 2 == 1 and o == sorted(o) and heads.numel() == 0
            flags = items[:, plan.F_FLAGS]
            for c in range(len(o) // 2):
                assert not (flags[o[2 * c]:o[2 * c + 1]] & plan.FLAG_SOLO).any()
                dec = items[o[2 * c + 1]:o[2 * c + 2]]
                assert (dec[:, plan.F_FLAGS] & plan.FLAG_SOLO).all()
                assert (dec[:, plan.F_NROWS] - dec[:, plan.F_ROW0] <= plan.DEC_ROWS).all()
        assert heads.numel() == 0 or tuple(heads.shape) == (ctas.numel() - 1, schedule.HEAD_INTS)
        assert out.shape == (b * hq, d) and out.dtype == q.dtype and lse.shape == (b * hq,)
        assert lse.dtype == pl.dtype == torch.float32
        assert po.numel() == 0 or po.dtype == tkb.partial_dtype(q.dtype)  # none for a direct plan

    @staticmethod
    def _check_queue(items, ctas, heads, counter, units, front, seed=0):
        """A unit queue's launch arguments as the bindings check them, and its claims as the
        kernel's fetchers make them (csrc/unit_queue.cuh), in a random interleaving of the CTAs:
        every unit runs exactly once, each CTA's first as its head says."""
        assert (counter is None) == (units is None)
        if counter is None:
            return
        assert counter.dtype == torch.int64 and counter.shape == (2,) and not counter.any()
        assert units.dtype == torch.int32 and units.dim() == 1
        starts, _, _ = schedule.unit_costs(items.numpy())
        assert sorted(units.tolist()) == starts.tolist()  # every unit, once
        n, grid = units.numel(), ctas.numel() - 1
        assert n >= grid and 0 <= front <= grid
        firsts = ctas[:-1].tolist()
        for c, row in enumerate(firsts):
            assert row == int(units[c if c < front else n - 1 - (c - front)])
            if heads.numel():
                assert int(heads[c, 0]) == row and heads[c, 2:2 + plan.ITEM_INTS].tolist() == items[row].tolist()
        rng, lo, hi, taken, active = random.Random(seed), 0, 0, list(firsts), list(range(grid))
        while active:
            c = rng.choice(active)
            idx = unit_queue.claim(lo, hi, c < front, grid, n, front)
            lo, hi = (lo + 1, hi) if c < front else (lo, hi + 1)
            if idx < 0:
                active.remove(c)
            else:
                taken.append(int(units[idx]))
        assert sorted(taken) == sorted(units.tolist())

    def _write(self, q, items, r, keys_of, scale, po, pl, out, lse):
        b, hq, d = q.shape
        items = items.numpy()
        direct = po.numel() == 0
        nslot = int(items[:, plan.F_SLOT].max()) + plan.NWG if direct else po.shape[0]
        covered = bool(torch.isnan(pl).all()) if not direct else False  # emulated_tk poisons what a covered plan leaves
        po64, pl64 = emulate_items(q, items, nslot, b * hq, hq, r, d, keys_of, scale, covered)
        if direct:  # each row's one state is its result
            o, l = merge(po64, pl64)
            out.copy_(o)
            lse.copy_(l)
        else:
            po.copy_(po64)
            pl.copy_(pl64)

    def shared_prefix_partials(self, q, ks, vs, suffix_lens, items, ctas, scale, po, pl, out, lse, heads,
                               counter, units, front, walk, dwg=False):
        self.calls.append("shared_prefix_partials" + ("_dwg" if dwg else ""))
        self._check_launch(q, items, ctas, po, pl, out, lse, heads, dwg)
        assert not (dwg and counter is not None), "the decode-warpgroup kernels take no unit queue"
        # The kernels without WALK would read a walked item's suffix tiles as its leaf's.
        assert walk is bool((items[:, plan.F_WALK] != 0).any()), "walk must say whether items walk suffixes"
        assert not (dwg and walk), "the decode-warpgroup kernels run no walked items"
        self._check_queue(items, ctas, heads, counter, units, front)
        keys_of = level_keys(list(zip(ks, vs)), suffix_lens)
        self._write(q, items, q.shape[1] // ks[0].shape[-2], keys_of, scale, po, pl, out, lse)

    def chunk_partials(self, q, k_chunks, v_chunks, clist, chunk_lens, tails, items, ctas, scale, po, pl, out, lse,
                       heads, counter, units, front, dwg=False):
        self.calls.append("chunk_partials" + ("_dwg" if dwg else ""))
        self._check_launch(q, items, ctas, po, pl, out, lse, heads, dwg)
        assert not (dwg and counter is not None), "the decode-warpgroup kernels take no unit queue"
        self._check_queue(items, ctas, heads, counter, units, front)
        # The kernel is compiled without zeroing past lengths when told no chunk is partial.
        assert tails is bool(chunk_lens.lt(k_chunks.shape[2]).any()), "tails must say whether a chunk is partial"
        keys_of = chunk_keys(k_chunks, v_chunks, clist, chunk_lens.tolist())
        self._write(q, items, q.shape[1] // k_chunks.shape[1], keys_of, scale, po, pl, out, lse)

    # The decode-warpgroup kernels (csrc/*_dwg.cu): the same states from two-list plans.
    def shared_prefix_partials_dwg(self, *args):
        self.shared_prefix_partials(*args, dwg=True)

    def chunk_partials_dwg(self, *args):
        self.chunk_partials(*args, dwg=True)

    def merge(self, po, pl, out, lse):
        self.calls.append("merge")
        assert po.shape[:2] == pl.shape and out.shape == po.shape[1:] and lse.shape == pl.shape[1:]
        o, l = merge(po, pl)
        out.copy_(o)
        lse.copy_(l)
