"""``chunk_attention`` on Triton: ChunkAttention's two-phase partition (arXiv 2402.15220).

- **Chunk-first**: the shared chunks (``table.shared_chunks``) are grouped by the range of
  sequences ``[begin, end)`` that reads them (a node of the prefix tree); a work item is a
  run of at most ``L`` chunks of one range. Program ``(item, kvh, row tile)`` stacks the
  queries of the range's sequences times the GQA group into one matrix, attends it to each
  chunk of the item in turn with ``tl.dot`` (a chunk is read once per tile, not once per
  sequence) and keeps one partial state per stacked row. Nodes are grouped by tile height
  (sized to their rows), one launch per group: a tree's leaves do not run the root's tiles.
- **Sequence-first**: program ``(sequence, kvh, split)`` attends the GQA group of one
  sequence to its private chunks (``table.private_chunks``), folds in the cached partial
  states of the items covering it (split 0 only) and normalises. With several splits (long
  private tails and few sequences) the splits' states are merged by :mod:`.merge`.
- **Overlapped** (on a GPU, when both phases have work): chunk-first (tensor cores) and
  sequence-first (HBM) run concurrently on streams (:mod:`attn.streams`), sequence-first
  writing partial states, and ``_fold_kernel`` merges both into the output.

Partial chunks are masked by ``table.chunk_lens``. The work items are host metadata derived
once per table (cached in ``table.host["triton"]``), never per call.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import triton
import triton.language as tl

from ..problems import ChunkProblem
from ..streams import concurrently
from . import config
from .merge import launch_merge
from .segment import LOG2E, tma_descriptor
from .tile import attend_block, attend_rows, attend_rows_tma, empty_state, finish, late, merge_state


@triton.jit
def _chunk_block(q, KC, VC, CLENS, IDS, first, blk, kvh, m_i, l_i, acc, qk_scale,
                 stride_kc, stride_kh, stride_kt, stride_vc, stride_vh, stride_vt, chunk_rows, chunk_size,
                 CONTIG: tl.constexpr, MASKED: tl.constexpr, IEEE: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCKS_PER_CHUNK: tl.constexpr, D: tl.constexpr, TMA: tl.constexpr):
    """Key block ``blk`` of the chunk list ``IDS``: block ``blk % BLOCKS_PER_CHUNK`` of chunk
    ``IDS[blk // BLOCKS_PER_CHUNK]``, masked by the chunk's length when ``MASKED``.

    ``CONTIG``: the list is a run of consecutive ids, ``IDS[i] = first + i``. The chunk id is
    then arithmetic on the loop counter instead of a load, so the K/V addresses of later
    blocks are known ahead and the software pipeliner prefetches them as in the segment
    kernel (an id loaded inside the loop leaves the loads one block deep: 1.2-1.5x slower).

    ``TMA``: ``KC``, ``VC`` are descriptors of the pools ``[chunks, Hkv, C, D]`` as
    ``[chunks * Hkv * C, D]`` (:func:`segment.tma_descriptor`): key ``t`` of chunk ``c`` and
    head ``h`` at row ``c * chunk_rows + h * chunk_size + t``.
    """
    if CONTIG:
        c = (first + blk // BLOCKS_PER_CHUNK).to(tl.int64)
    else:
        c = tl.load(IDS + blk // BLOCKS_PER_CHUNK).to(tl.int64)
    offs_t = (blk % BLOCKS_PER_CHUNK) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    if MASKED:
        n_ok = offs_t < tl.load(CLENS + c)
    else:
        n_ok = offs_t >= 0
    if TMA:
        row = (c * chunk_rows + kvh * chunk_size + (blk % BLOCKS_PER_CHUNK) * BLOCK_N).to(tl.int32)
        m_i, l_i, acc = attend_rows_tma(q, KC, VC, row, 0, n_ok, n_ok, m_i, l_i, acc, qk_scale, MASKED, False, IEEE)
    else:
        k_ptrs = KC + c * stride_kc + kvh * stride_kh + offs_t[None, :] * stride_kt + offs_d[:, None]
        v_ptrs = VC + c * stride_vc + kvh * stride_vh + offs_t[:, None] * stride_vt + offs_d[None, :]
        m_i, l_i, acc = attend_block(q, k_ptrs, v_ptrs, n_ok, m_i, l_i, acc, qk_scale, MASKED, IEEE)
    return m_i, l_i, acc


@triton.jit
def _private_of_leaf(q, KC, VC, CLENS, PRIV, NPRIV, absorbs, b0, tile, rows, kvh, local, m_i, l_i, acc, qk_scale,
                     stride_kc, stride_kh, stride_kt, stride_vc, stride_vh, stride_vt, stride_priv, ratio, max_priv,
                     MASKED: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCKS_PER_CHUNK: tl.constexpr, D: tl.constexpr):
    """A leaf item (``absorbs``) also attends each of its sequences to its private chunks, the
    other sequences' rows masked (``local``: each row's sequence in the item): the sequence-first
    work of a tree's leaves runs in programs that fit beside the root's instead of a launch that
    waits for SMs. One flat loop over ``max_priv`` chunk slots per sequence of the tile (slots
    past a sequence's count are masked), so the addresses follow from the loop counter."""
    j0 = (tile * BLOCK_M) // ratio
    j1 = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // ratio + 1, rows // ratio)
    per_seq = max_priv * BLOCKS_PER_CHUNK
    offs_d = tl.arange(0, D)
    for blk in range(0, tl.where(absorbs != 0, tl.maximum(j1 - j0, 0) * per_seq, 0)):
        j = j0 + blk // per_seq
        slot = (blk % per_seq) // BLOCKS_PER_CHUNK
        s = (b0 + j).to(tl.int64)
        offs_t = (blk % BLOCKS_PER_CHUNK) * BLOCK_N + tl.arange(0, BLOCK_N)
        # (a vector mask: the interpreter does not broadcast a scalar one)
        live = (slot + tl.zeros_like(offs_t)) < tl.load(NPRIV + s)
        c = tl.load(PRIV + s * stride_priv + slot + tl.zeros_like(offs_t), mask=live, other=0)
        c = tl.max(c, 0).to(tl.int64)
        if MASKED:
            n_ok = live & (offs_t < tl.load(CLENS + c))
        else:
            n_ok = live
        k_ptrs = KC + c * stride_kc + kvh * stride_kh + offs_t[None, :] * stride_kt + offs_d[:, None]
        v_ptrs = VC + c * stride_vc + kvh * stride_vh + offs_t[:, None] * stride_vt + offs_d[None, :]
        m_i, l_i, acc = attend_rows(q, k_ptrs, v_ptrs, n_ok, local == j, m_i, l_i, acc, qk_scale, True, True, IEEE)
    return m_i, l_i, acc


@triton.jit
def _item_rows(offs_m, rows, kvh, ratio):
    """Stacked row j of an item is (sequence begin + j // ratio, query head kvh*ratio + j % ratio)."""
    return offs_m < rows, offs_m // ratio, kvh * ratio + offs_m % ratio


@triton.jit
def _sequence_heads(pid, num_kv_heads, ratio, BLOCK_H: tl.constexpr):
    """Program ``pid`` of a per-sequence kernel: sequence ``n`` and the heads
    ``[kvh * ratio, (kvh + 1) * ratio)`` of it (a tile of ``BLOCK_H`` rows, ``h_ok`` the real ones)."""
    n = pid // num_kv_heads
    kvh = pid % num_kv_heads
    offs_h = tl.arange(0, BLOCK_H)
    return n, kvh, kvh * ratio + offs_h, offs_h < ratio


@triton.jit
def _chunk_first_kernel(
    Q, KC, VC, KD, VD, CLENS, IT_BEGIN, IT_END, IT_C0, IT_C1, IT_ROW, IT_CHUNKS, IT_PRIV, PRIV, NPRIV, PO, PL,
    stride_qn, stride_qh, stride_kc, stride_kh, stride_kt, stride_vc, stride_vh, stride_vt, stride_priv,
    num_q_heads, ratio, max_priv, chunk_rows, chunk_size, qk_scale,
    TMA: tl.constexpr, CONTIG: tl.constexpr, MASKED: tl.constexpr, LEAVES: tl.constexpr, PRIV_MASKED: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCKS_PER_CHUNK: tl.constexpr, D: tl.constexpr,
):
    it = tl.program_id(0)
    kvh = tl.program_id(1)
    tile = tl.program_id(2)
    b0 = tl.load(IT_BEGIN + it)
    rows = (tl.load(IT_END + it) - b0) * ratio
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok, local, head = _item_rows(offs_m, rows, kvh, ratio)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + (b0 + local).to(tl.int64)[:, None] * stride_qn + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    c0 = tl.load(IT_C0 + it)
    # Tiles past this item's rows (the grid covers the largest group) do no work.
    c1 = tl.where(tile * BLOCK_M < rows, tl.load(IT_C1 + it), c0)
    # Every item holds at least one chunk, so IT_CHUNKS[c0] exists.
    first = tl.load(IT_CHUNKS + c0) - c0 if CONTIG else 0
    m_i, l_i, acc = empty_state(BLOCK_M, D)
    # One flat loop over the key blocks of all the item's chunks, so that the compiler
    # pipelines the loads across chunk boundaries.
    for blk in range(c0 * BLOCKS_PER_CHUNK, c1 * BLOCKS_PER_CHUNK):
        m_i, l_i, acc = _chunk_block(q, KD, VD, CLENS, IT_CHUNKS, first, blk, kvh, m_i, l_i, acc, qk_scale,
                                     stride_kc, stride_kh, stride_kt, stride_vc, stride_vh, stride_vt, chunk_rows,
                                     chunk_size, CONTIG, MASKED, IEEE, BLOCK_N, BLOCKS_PER_CHUNK, D, TMA)
    if LEAVES:
        m_i, l_i, acc = _private_of_leaf(q, KC, VC, CLENS, PRIV, NPRIV, tl.load(IT_PRIV + it), b0, tile, rows, kvh,
                                         offs_m // ratio, m_i, l_i, acc, qk_scale, stride_kc, stride_kh, stride_kt,
                                         stride_vc, stride_vh, stride_vt, stride_priv, ratio, max_priv,
                                         PRIV_MASKED, IEEE, BLOCK_M, BLOCK_N, BLOCKS_PER_CHUNK, D)
    out, lse = finish(m_i, l_i, acc)
    if BLOCK_M >= 64:
        row_ok, local, head = _item_rows(late(offs_m, l_i), rows, kvh, ratio)
    prow = (tl.load(IT_ROW + it) + local).to(tl.int64) * num_q_heads + head
    tl.store(PO + prow[:, None] * D + offs_d[None, :], out.to(PO.dtype.element_ty), mask=row_ok[:, None])
    tl.store(PL + prow, lse, mask=row_ok)


@triton.jit
def _seq_first_kernel(
    Q, KC, VC, CLENS, PRIV, NPRIV, SEQ_ROWS, PO, PL, OUT, LSE,
    stride_qn, stride_qh, stride_kc, stride_kh, stride_kt, stride_vc, stride_vh, stride_vt,
    stride_priv, seq_width, stride_os, stride_on, stride_oh, stride_ls, stride_ln,
    num_kv_heads, num_q_heads, ratio, chunks_per_split, chunk_rows, chunk_size, qk_scale,
    TMA: tl.constexpr, FINAL: tl.constexpr, FOLD_ITEMS: tl.constexpr, CONTIG: tl.constexpr, MASKED: tl.constexpr, IEEE: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCKS_PER_CHUNK: tl.constexpr, D: tl.constexpr, UNROLL: tl.constexpr,
):
    split = tl.program_id(1)
    n, kvh, head, h_ok = _sequence_heads(tl.program_id(0), num_kv_heads, ratio, BLOCK_H)
    offs_d = tl.arange(0, D)
    n64 = n.to(tl.int64)
    q = tl.load(Q + n64 * stride_qn + head[:, None] * stride_qh + offs_d[None, :], mask=h_ok[:, None], other=0.0)
    m_i, l_i, acc = empty_state(BLOCK_H, D)

    i0 = split * chunks_per_split
    npriv = tl.load(NPRIV + n)
    i1 = tl.minimum(i0 + chunks_per_split, npriv)
    # A sequence without private chunks has no PRIV row to read (the table may be [N, 0]).
    first = tl.load(PRIV + n64 * stride_priv, mask=npriv > 0, other=0) if CONTIG else 0
    for blk in range(i0 * BLOCKS_PER_CHUNK, i1 * BLOCKS_PER_CHUNK):
        m_i, l_i, acc = _chunk_block(q, KC, VC, CLENS, PRIV + n64 * stride_priv, first, blk, kvh, m_i, l_i,
                                     acc, qk_scale, stride_kc, stride_kh, stride_kt, stride_vc, stride_vh,
                                     stride_vt, chunk_rows, chunk_size, CONTIG, MASKED, IEEE, BLOCK_N, BLOCKS_PER_CHUNK, D, TMA)

    if FOLD_ITEMS:
        # The cached chunk-first states of this sequence, folded in once (by split 0).
        m_i, l_i, acc = _fold_items(m_i, l_i, acc, SEQ_ROWS + n64 * seq_width, tl.where(split == 0, seq_width, 0),
                                    PO, PL, head, h_ok, num_q_heads, D, UNROLL)

    out, lse = finish(m_i, l_i, acc)
    orow = split.to(tl.int64) * stride_os + n64 * stride_on + head * stride_oh
    tl.store(OUT + orow[:, None] + offs_d[None, :], out.to(OUT.dtype.element_ty), mask=h_ok[:, None])
    tl.store(LSE + split.to(tl.int64) * stride_ls + n64 * stride_ln + head, lse, mask=h_ok)


def fold_unroll(most_items: int) -> int:
    """Items folded per step: every item of the sequence with the most, up to 8."""
    return min(8, config.next_pow2(max(1, most_items)))


@triton.jit
def _fold_items(m_i, l_i, acc, ROWS, width, PO, PL, head, h_ok, num_q_heads,
                D: tl.constexpr, UNROLL: tl.constexpr):
    """Fold the chunk-first partial states of one sequence (their rows ``ROWS[:width]`` in
    the partial buffer, padded with -1 to a multiple of ``UNROLL``) into the running state of
    its heads.

    The rows come from the plan (:func:`work_items`), so a state sits behind one load,
    not three (item count, item id, item row), and ``UNROLL`` per step keeps the loads of
    several states in flight together (a padding entry's state is masked: lse = -inf,
    weight 0)."""
    offs_d = tl.arange(0, D)
    for j0 in range(0, width, UNROLL):
        for jj in tl.static_range(UNROLL):
            r = tl.load(ROWS + j0 + jj)
            prow = tl.maximum(r, 0).to(tl.int64) * num_q_heads + head
            # (a vector mask: the interpreter does not broadcast a scalar one)
            ok = h_ok & ((r + tl.zeros_like(head)) >= 0)
            o = tl.load(PO + prow[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
            lse = tl.load(PL + prow, mask=ok, other=float("-inf"))
            m_i, l_i, acc = merge_state(m_i, l_i, acc, o, lse)
    return m_i, l_i, acc


@triton.jit
def _fold_kernel(SEQ_ROWS, PO, PL, SO, SL, OUT, LSE,
                 seq_width, stride_os, stride_on, stride_oh, stride_ls, stride_ln,
                 num_kv_heads, num_q_heads, ratio, splits,
                 BLOCK_H: tl.constexpr, D: tl.constexpr, UNROLL: tl.constexpr):
    """After overlapped phases: sequence ``n``'s chunk-first states and its ``splits``
    sequence-first states (``SO``, ``SL``) merged into the output. Program ``(n, j)`` takes
    heads ``[j * heads, (j + 1) * heads)`` (the ``ratio`` argument), ``num_kv_heads`` such
    groups cover a sequence."""
    n, kvh, head, h_ok = _sequence_heads(tl.program_id(0), num_kv_heads, ratio, BLOCK_H)
    offs_d = tl.arange(0, D)
    n64 = n.to(tl.int64)
    m_i, l_i, acc = empty_state(BLOCK_H, D)
    m_i, l_i, acc = _fold_items(m_i, l_i, acc, SEQ_ROWS + n64 * seq_width, seq_width, PO, PL, head, h_ok,
                                num_q_heads, D, UNROLL)
    for s in range(0, splits):
        srow = s * stride_os + n64 * stride_on + head * stride_oh
        o = tl.load(SO + srow[:, None] + offs_d[None, :], mask=h_ok[:, None], other=0.0).to(tl.float32)
        lse = tl.load(SL + s * stride_ls + n64 * stride_ln + head, mask=h_ok, other=float("-inf"))
        m_i, l_i, acc = merge_state(m_i, l_i, acc, o, lse)
    out, lse = finish(m_i, l_i, acc)
    orow = n64 * num_q_heads + head
    tl.store(OUT + orow[:, None] * D + offs_d[None, :], out.to(OUT.dtype.element_ty), mask=h_ok[:, None])
    tl.store(LSE + orow, lse, mask=h_ok)


def _t(a, device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a, dtype=np.int64), dtype=torch.int32, device=device)


def _tile_classes(ranges: dict, ratio: int, num_kv_heads: int, chunk_size: int, tiles_for, device,
                  overlap: bool) -> list:
    """The chunk-first launches: tree nodes grouped by tile shape, with chunks per item.

    A node of ``rows`` stacked rows gets the tile ``tiles_for(rows)``, as a prefix level of
    that many rows would: on a tree the 16-row leaves run 16-row tiles instead of the
    128-row tiles of the root (8x the tensor work wasted). Each class is cut into items like
    a level of ``shared_prefix_attention`` (:func:`config.num_splits` on its longest node).

    Returns a list of ``(tiles, nodes, chunks_per_item)``, largest tiles first.
    """
    by_tiles: dict = {}
    for rg in ranges:
        by_tiles.setdefault(tiles_for((rg[1] - rg[0]) * ratio), []).append(rg)
    classes = []
    forced = config.forced_value("chunks_per_item", None)
    for tiles, nodes in sorted(by_tiles.items(), key=lambda kv: -kv[0].block_m):
        longest = max(len(ranges[rg]) for rg in nodes)
        if forced is not None:
            per = forced
        else:
            base = sum(num_kv_heads * config.cdiv((e - b) * ratio, tiles.block_m) for b, e in nodes)
            splits, _ = config.num_splits(longest * chunk_size, base, tiles, device, None,
                                          min_split=config.prefix_min_split(overlap))
            per = config.cdiv(longest, splits)
        classes.append((tiles, nodes, per))
    return classes


def _consecutive(ids) -> bool:
    """Whether ``ids`` is a run ``a, a + 1, a + 2, ...`` (a fresh cache fills its pool in order)."""
    ids = np.asarray(ids)
    return bool(ids.size == 0 or (np.diff(ids) == 1).all())


def _leaf_items(begin, end, covers, per_node, item_tiles, ratio: int) -> list:
    """Which items also walk their sequences' private chunks (:func:`_private_of_leaf`): an
    item that is the whole of its node and the deepest node of each of its sequences, on a
    tree (each sequence under 2+ nodes) whose leaf rows fit one small tile
    (:func:`config.leaf_with_suffix`)."""
    deepest = [min(c, key=lambda i: end[i] - begin[i]) if c else -1 for c in covers]
    flags = []
    for i, (b, e) in enumerate(zip(begin, end)):
        seqs = range(b, e)
        flags.append(int(all(deepest[n] == i for n in seqs) and config.leaf_with_suffix(
            min(len(covers[n]) for n in seqs), (e - b) * ratio, item_tiles[i], per_node[i], 1)))
    return flags


def work_items(table, ratio: int, num_kv_heads: int, chunk_size: int, head_dim: int, dtype: torch.dtype,
               device: torch.device, overlap: bool, leaves: bool = False) -> dict:
    """Chunk-first work items of ``table`` (host-side, computed once per table and launch shape).

    Shared chunks with one sequence range form a tree node; nodes are grouped by tile shape
    (one launch each, :func:`_tile_classes`) and their chunks cut into items. Also: each
    sequence's items, its number of private chunks, and whether every shared / private chunk
    is full (then no masks) or runs of consecutive ids (then ids are computed, not loaded).
    ``leaves``: the sequence-first phase would run unsplit, so leaf items may take its work
    (:func:`_leaf_items`); ``num_private_left`` is then what remains for it.
    """
    h = table.host
    # Everything below follows from the table and these arguments (and forced heuristics):
    # looked up first, so that a call on a known table does no host work.
    key = (ratio, num_kv_heads, chunk_size, head_dim, dtype, str(device), overlap, leaves, config.forced_items())
    cache = h.setdefault("triton", {})
    if key in cache:
        return cache[key]
    sh, sb, se = h["shared_chunks"], h["shared_begin"], h["shared_end"]
    ranges: dict = {}
    for c, b, e in zip(sh.tolist(), sb.tolist(), se.tolist()):
        ranges.setdefault((b, e), []).append(c)
    tiles_for = functools.partial(config.shared_tiles, d=head_dim, dtype=dtype, device=device, overlap=overlap)
    classes = _tile_classes(ranges, ratio, num_kv_heads, chunk_size, tiles_for, device, overlap) if ranges else []
    begin, end, c0, c1, row, chunks = [], [], [], [], [], []
    covers = [[] for _ in range(table.num_seqs)]
    launches = []  # (tiles, chunks per item, first item, items, row tiles of its largest node)
    item_tiles, per_node = [], []
    rows = 0
    for tiles, nodes, per in classes:
        first = len(begin)
        for b, e in nodes:
            cs = ranges[(b, e)]
            cut = config.cdiv(len(cs), per)
            item_tiles.extend([tiles] * cut)
            per_node.extend([cut] * cut)
            for s in range(0, len(cs), per):
                part = cs[s:s + per]
                for n in range(b, e):
                    covers[n].append(len(begin))
                begin.append(b), end.append(e), row.append(rows)
                c0.append(len(chunks)), chunks.extend(part), c1.append(len(chunks))
                rows += e - b
        most = max(e - b for b, e in nodes) * ratio
        launches.append((tiles, per, first, len(begin) - first, config.cdiv(most, tiles.block_m)))
    # Each sequence's state rows (item i holds sequence n's state at row[i] + n - begin[i]),
    # padded with -1 to a multiple of fold_unroll(), which the fold reads in whole steps.
    most_items = max([len(c) for c in covers] + [1])
    width = config.cdiv(most_items, fold_unroll(most_items)) * fold_unroll(most_items)
    seq_rows = np.full((table.num_seqs, width), -1, dtype=np.int64)
    for n, c in enumerate(covers):
        seq_rows[n, : len(c)] = [row[i] + n - begin[i] for i in c]
    priv = h["private_chunks"]
    lens = h["chunk_lens"]
    num_private = (priv >= 0).sum(axis=1) if priv.size else np.zeros(table.num_seqs, dtype=np.int64)
    absorbs = _leaf_items(begin, end, covers, per_node, item_tiles, ratio) if leaves and priv.size else [0] * len(begin)
    left = num_private.copy()
    for i, flag in enumerate(absorbs):
        if flag:
            left[begin[i]:end[i]] = 0
    if config.forced_value("contiguous", True):
        shared_contig = all(_consecutive(chunks[a:b]) for a, b in zip(c0, c1))
        private_contig = all(_consecutive(row[row >= 0]) for row in priv)
    else:
        shared_contig = private_contig = False
    t = {name: _t(v, device) for name, v in (("begin", begin), ("end", end), ("c0", c0), ("c1", c1), ("row", row),
                                             ("leaf", absorbs))}
    meta = {
        "num_items": len(begin), "rows": rows, **t,
        # Each launch indexes its own items from 0: views of the item arrays from its first.
        "launches": [(tiles, per, count, row_tiles, {name: a[first:] for name, a in t.items()},
                      any(absorbs[first:first + count]))
                     for tiles, per, first, count, row_tiles in launches],
        "chunks": _t(chunks, device), "seq_rows": _t(seq_rows, device), "most_items": most_items,
        "num_private": _t(num_private, device), "num_private_left": _t(left, device),
        "all_private_taken": bool(priv.size) and not left.any(),
        # Stacked query rows x keys of the shared chunks, and keys left to the sequence-first
        # phase (config.suffix_critical).
        "shared_row_keys": int((se - sb).sum()) * chunk_size if sh.size else 0,
        "private_keys": int(left.sum()) * chunk_size,
        "shared_full": bool((lens[sh] == chunk_size).all()) if sh.size else True,
        "private_full": bool((lens[priv[priv >= 0]] == chunk_size).all()) if priv.size else True,
        "shared_contig": shared_contig, "private_contig": private_contig,
    }
    cache[key] = meta
    return meta


def _descriptors(kc: torch.Tensor, vc: torch.Tensor, block_n: int, q: torch.Tensor, kind: str, overlap: bool,
                 critical: bool = True, masked: bool = False):
    """The pools as :func:`segment.tma_descriptor` descriptors when a launch of ``kind`` reads by
    descriptor (:func:`config.use_tma`; chunk-first launches count as prefix levels, or as
    a tree's leaves when their items take private chunks, the sequence-first one as a
    suffix) and both can be described; else the pools themselves."""
    if config.use_tma(q.device, q.dtype, kind, overlap, critical, masked) and kc.stride() == vc.stride():
        kd, vd = tma_descriptor(kc, 3, block_n), tma_descriptor(vc, 3, block_n)
        if kd is not None and vd is not None:
            return kd, vd
    return kc, vc


def run_chunk(p: ChunkProblem) -> tuple[torch.Tensor, torch.Tensor]:
    q, t = p.q, p.table
    n, hq, d = q.shape
    hkv, csize = p.num_kv_heads, p.chunk_size
    ratio = hq // hkv
    dev = q.device
    out = torch.empty(n, hq, d, dtype=q.dtype, device=dev)
    lse = torch.empty(n, hq, dtype=torch.float32, device=dev)
    if n == 0:
        return out, lse
    ieee = q.dtype == torch.float32
    qk_scale = p.scale * LOG2E
    kc, vc = p.k_chunks, p.v_chunks
    max_priv = int(t.private_chunks.shape[1]) if t.private_chunks.dim() == 2 else 0
    # Both phases present: on a GPU they run concurrently and a fold kernel merges them;
    # otherwise split 0 of the sequence-first phase folds the chunk-first states in.
    overlap = config.overlap_phases(int(t.host["shared_chunks"].size > 0) + int(max_priv > 0), dev)

    dt = config.decode_tiles(ratio, d, q.dtype, dev, overlap=overlap)
    dt_n = min(dt.block_n, max(16, config.next_pow2(csize)))
    per = config.forced_value("private_split", None)
    if per is None:
        # A split shorter than ~256 keys costs more in partial states than it gains.
        want = config.best_splits(n * hkv, config.cdiv(max_priv, config.cdiv(256, csize)), config.slots(dt, dev))
        per = max(1, config.cdiv(max_priv, want))
    splits = max(1, config.cdiv(max_priv, per))
    dt = config.fit_stages(dt, per * config.cdiv(csize, dt_n))

    meta = work_items(t, ratio, hkv, csize, d, q.dtype, dev, overlap, leaves=splits == 1)
    po = torch.empty(max(1, meta["rows"]), hq, d, dtype=config.partial_dtype(q.dtype), device=dev)
    pl = torch.empty(max(1, meta["rows"]), hq, dtype=torch.float32, device=dev)
    priv_stride = max(1, t.private_chunks.stride(0)) if t.private_chunks.dim() == 2 else 0

    def chunk_first(st, per, count, row_tiles, it, leaves):
        st_n = min(st.block_n, max(16, config.next_pow2(csize)))
        blocks = per * config.cdiv(csize, st_n)
        if leaves:
            blocks += (st.block_m // ratio) * max_priv * config.cdiv(csize, st_n)
        st = config.fit_stages(st, blocks)
        kd, vd = _descriptors(kc, vc, st_n, q, "leaf+suffix" if leaves else "prefix", overlap)
        _chunk_first_kernel[(count, hkv, row_tiles)](
            q, kc, vc, kd, vd, t.chunk_lens, it["begin"], it["end"], it["c0"], it["c1"], it["row"],
            meta["chunks"], it["leaf"], t.private_chunks, meta["num_private"], po, pl,
            q.stride(0), q.stride(1), kc.stride(0), kc.stride(1), kc.stride(2),
            vc.stride(0), vc.stride(1), vc.stride(2), priv_stride,
            hq, ratio, max_priv, hkv * csize, csize, qk_scale,
            TMA=kd is not kc, CONTIG=meta["shared_contig"], MASKED=not (meta["shared_full"] and csize % st_n == 0),
            LEAVES=leaves, PRIV_MASKED=not (meta["private_full"] and csize % st_n == 0), IEEE=ieee,
            BLOCK_M=st.block_m, BLOCK_N=st_n, BLOCKS_PER_CHUNK=config.cdiv(csize, st_n), D=d,
            **st.launch_options(),
        )

    chunk_firsts = [functools.partial(chunk_first, *launch) for launch in meta["launches"]]
    final = splits == 1 and not overlap
    if final:
        so, sl = out.view(1, n, hq, d), lse.view(1, n, hq)
    else:
        so = torch.empty(splits, n, hq, d, dtype=config.partial_dtype(q.dtype), device=dev)
        sl = torch.empty(splits, n, hq, dtype=torch.float32, device=dev)

    unroll = fold_unroll(meta["most_items"])

    def seq_first():
        critical = config.suffix_critical(4 * hq * d * meta["shared_row_keys"],
                                          2 * hkv * d * meta["private_keys"] * q.element_size())
        masked = not (meta["private_full"] and csize % dt_n == 0)
        kd, vd = _descriptors(kc, vc, dt_n, q, "suffix", overlap, critical, masked)
        _seq_first_kernel[(n * hkv, splits)](
            q, kd, vd, t.chunk_lens, t.private_chunks, meta["num_private_left"], meta["seq_rows"], po, pl, so, sl,
            q.stride(0), q.stride(1), kc.stride(0), kc.stride(1), kc.stride(2),
            vc.stride(0), vc.stride(1), vc.stride(2),
            priv_stride, meta["seq_rows"].stride(0),
            so.stride(0), so.stride(1), so.stride(2), sl.stride(0), sl.stride(1),
            hkv, hq, ratio, per, hkv * csize, csize, qk_scale,
            TMA=kd is not kc, FINAL=final, FOLD_ITEMS=not overlap, CONTIG=meta["private_contig"],
            MASKED=masked, IEEE=ieee,
            BLOCK_H=dt.block_m, BLOCK_N=dt_n, BLOCKS_PER_CHUNK=config.cdiv(csize, dt_n), D=d, UNROLL=unroll,
            **dt.launch_options(),
        )

    if overlap:
        # The launch of the largest tiles (the root's, on a tree) runs longest: it goes first
        # (config.launch_order). With every private chunk taken by the leaf items, no
        # sequence-first states to fold.
        taken = meta["all_private_taken"]
        launches = chunk_firsts + ([] if taken else [seq_first])
        concurrently([launches[j] for j in config.launch_order(len(launches))], dev)
        # A fold program takes the heads of g kv heads, a tile of >= 16 real rows (one GQA group
        # of 4 heads in a 16-row tile left 3/4 of each program idle).
        g = config.fold_kv_heads(hkv, ratio)
        _fold_kernel[(n * (hkv // g),)](
            meta["seq_rows"], po, pl, so, sl, out, lse,
            meta["seq_rows"].stride(0), so.stride(0), so.stride(1), so.stride(2), sl.stride(0), sl.stride(1),
            hkv // g, hq, g * ratio, 0 if taken else splits, BLOCK_H=max(16, config.next_pow2(g * ratio)), D=d, UNROLL=unroll,
            num_warps=4,
        )
        return out, lse
    for launch in chunk_firsts:
        launch()
    seq_first()
    if splits > 1:
        launch_merge(so.view(splits, n * hq, d), sl.view(splits, n * hq), out.view(n * hq, d), lse.view(n * hq))
    return out, lse
