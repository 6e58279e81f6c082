"""Work-item tables of the tk kernels (host side, built once per shape or per ChunkTable).

Every attention phase runs as items of ``csrc/stacked.cuh``: a block of stacked query rows
against a range of K/V tiles, writing a partial state into a slot. An item is 12 int32
(see ``ItemField`` in stacked_layout.cuh). Slots are laid out so that each (slot, row) is written by
at most one item; the merge kernel combines every slot of a row, skipping ``lse = -inf``.
When every row is in one item (:func:`mark_direct`), items write the final output instead.
"""
from __future__ import annotations

import math
import os

import numpy as np

ITEM_INTS = 12
TILE = 64       # keys per tile, query rows per consumer warpgroup
NWG = 2         # consumer warpgroups per CTA
BLOCK_ROWS = TILE * NWG
# A kv-split item's warpgroups take alternate tiles and write slot and slot + 1, so each split
# of a phase with kv-split items owns two slots (a phase of row-split items only, one).
SLOTS_PER_SPLIT = NWG
MIN_TILES_ROWS = 4   # fewest tiles of a row-split item (more splits only add merge traffic)
MIN_TILES_KV = 4     # fewest tiles of a kv-split item (two per warpgroup)
# Costs in a CTA's time, in kv-split tiles, measured (H200, bench/tk_timeline.py, logs
# 0036-0037-tk-epilogue.log): a kv-split (decode) item takes ~1.2 us plus ~0.7 us per tile
# (tree-3level's 1-tile items 1.86 us, gqa-8b's 4-tile ones 3.94 us), a row-split tile ~1.2 us
# (gqa-8b: 53 us for 43 tiles). So a row-split tile costs 1.75 kv tiles and an item 1.7 (with
# these costs gqa-8b is 4-5 % faster than with 1.2 and 1.0, the rest within 1 %: runs 0039 /
# 0040, logs/0039-0042-tk-plan-costs.log). Before session 10's epilogue fix a decode item's
# fixed cost was ~1 us higher, and 1.2 : 1 (+1 per item) was what balanced the CTAs; the guess
# of 2 : 1 before that gave decode-heavy CTAs up to 20 % more time than the others.
ROW_TILE_COST, KV_TILE_COST = 1.75, 1.0

F_FLAGS, F_SRC, F_GIDX, F_HEAD, F_SEQ0, F_NROWS, F_ROW0, F_TILE0, F_TILE1, F_KEYLEN, F_SLOT, F_WALK = range(12)
# F_WALK (level mode; 0: none): a leaf item that walks its sequences' suffixes after its own
# tiles (walk_suffixes), packed as the suffix's source in the low WALK_SRC_BITS, WALK_RAGGED when
# suffix_lens are given, and the suffix capacity S (keys) from bit WALK_CAP_SHIFT up.
WALK_SRC_BITS, WALK_RAGGED, WALK_CAP_SHIFT = 3, 8, 4
# bits of F_FLAGS (stacked_layout.cuh ItemFlag). FLAG_PAIR: this kv-split item and the next
# one run side by side, one per consumer warpgroup (pair_kv_items); FLAG_PAIRED marks that
# next one (the kernel reads only FLAG_PAIR; schedules and tools read both).
FLAG_KV_SPLIT, FLAG_DIRECT, FLAG_PAIR, FLAG_PAIRED = 1, 2, 4, 8
# FLAG_CLEAR_NEXT: an item that writes one slot also writes lse = -inf into slot + 1 for its
# rows (clear_unwritten), so that every (slot, row) is written and no -inf fill is needed.
FLAG_CLEAR_NEXT = 16
# FLAG_SOLO: a kv-split item of at most DEC_ROWS rows that one warpgroup runs whole, writing
# one slot: the decode warpgroup of an ATTN_TK_DECODE_WG build (schedule.assign_streams).
FLAG_SOLO = 32
DEC_ROWS = 16
# A direct kv-split item's two warpgroups combine their states through a shared-memory buffer
# of this many rows (stacked.cuh: one warp's 16 rows), so only items this small go direct.
DIRECT_KV_ROWS = 16


def tile_cost(kv_split) -> float:
    return KV_TILE_COST if kv_split else ROW_TILE_COST


def split_factor_from_env(value: str | None) -> float:
    """``ATTN_TK_SPLIT_FACTOR`` (a tuning knob, read once at import like ``ATTN_TK_PLAN_COSTS``):
    how many items of the largest size :func:`split_cap` allows make one CTA's share. Unset: 2."""
    if not value:
        return 2.0
    try:
        f = float(value)
    except ValueError:
        f = float("nan")
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"ATTN_TK_SPLIT_FACTOR={value!r}: expected a positive number, e.g. '2'")
    return f


SPLIT_FACTOR = split_factor_from_env(os.environ.get("ATTN_TK_SPLIT_FACTOR"))
# The tk backend plans each shape with every one of these factors and keeps the plan whose
# largest planned CTA load is within SPLIT_TOLERANCE of the smallest with the fewest partial
# slots (backend._best_split). H200, runs 0077-0080 (one machine, the factor fixed): 1.5 made
# tree-3level 5.1-7.3 % and gqa-8b 2.3-2.7 % faster than 2 (one slot fewer each), and
# gqa-8b-long 19 % slower (176 prefix items on 132 CTAs: its largest planned load 168 against
# 136 at 2, which the choice sees); 3 and 4 were slower on every sharing workload.
AUTO_SPLIT_FACTORS = (2.0, 1.5, 2.5, 3.0)
SPLIT_TOLERANCE = 0.01


def split_cap(total_cost: float, num_ctas: int, factor: float | None = None) -> float:
    """Most cost one item should take so that the persistent CTAs balance.

    CTAs run about ``total / num_ctas`` each; items of at most a ``factor``-th of that
    (default ``SPLIT_FACTOR``) let the longest-first schedule even them out, while fewer,
    longer items keep the number of partial slots (merge traffic) down.
    """
    f = SPLIT_FACTOR if factor is None else factor
    return max(MIN_TILES_ROWS * ROW_TILE_COST, total_cost / (f * max(1, num_ctas)))


def num_splits(ntiles: int, kv_split: bool, cap: float) -> int:
    """Split-K factor of ``ntiles`` tiles: slices of at most ``cap`` cost, never under the minimum."""
    if ntiles <= 0:
        return 1
    min_tiles = MIN_TILES_KV if kv_split else MIN_TILES_ROWS
    return max(1, min(math.ceil(ntiles * tile_cost(kv_split) / cap), ntiles // min_tiles))


def _items(n: int, **fields) -> np.ndarray:
    """``n`` items (int64 ``[n, 12]``), each field given as a scalar or an ``[n]`` array
    (``flags``, ``src``, ``gidx``, ``head``, ``seq0``, ``nrows``, ``row0``, ``t0``, ``t1``,
    ``keylen``, ``slot``, ``walk``; absent fields are 0)."""
    out = np.zeros((n, ITEM_INTS), dtype=np.int64)
    for name, col in (("flags", F_FLAGS), ("src", F_SRC), ("gidx", F_GIDX), ("head", F_HEAD), ("seq0", F_SEQ0),
                      ("nrows", F_NROWS), ("row0", F_ROW0), ("t0", F_TILE0), ("t1", F_TILE1), ("keylen", F_KEYLEN),
                      ("slot", F_SLOT), ("walk", F_WALK)):
        if name in fields:
            out[:, col] = fields.pop(name)
    if fields:
        raise TypeError(f"unknown item fields {sorted(fields)}")
    return out


def _row_blocks(nrows: int):
    """(row0, kv_split) of the CTA row blocks of ``nrows`` stacked rows."""
    if nrows <= TILE:
        return [(0, True)]
    return [(r0, nrows - r0 <= TILE) for r0 in range(0, nrows, BLOCK_ROWS)]


def _split_grid(nsplit: int, per: int, ntiles: int, inner: tuple, blocks) -> tuple:
    """Index columns of a phase's items in plan order: split ``j`` outermost, then the
    ``inner`` dimensions (e.g. groups, heads), then the row blocks. Returns ``(t0, t1, j,
    inner indices..., row0, kv)``, each ``[nsplit * prod(inner) * len(blocks)]``."""
    idx = np.indices((nsplit,) + tuple(inner) + (len(blocks),)).reshape(2 + len(inner), -1)
    j, k = idx[0], idx[-1]
    row0 = np.asarray([b[0] for b in blocks], dtype=np.int64)[k]
    kv = np.asarray([int(b[1]) for b in blocks], dtype=np.int64)[k]
    return (j * per, np.minimum(ntiles, (j + 1) * per), j) + tuple(idx[1:-1]) + (row0, kv)


def level_plan(batch: int, hq: int, hkv: int, levels, suffix: int, ragged: bool, num_sms: int,
               split_factor: float | None = None, walk: bool = False):
    """Items of ``shared_prefix_attention``.

    Parameters
    ----------
    levels : list of ``(G_i, P_i)``; source ``i`` is level ``i``, source ``len(levels)`` the suffix.
    suffix : ``S`` (0: no suffix source).
    ragged : True when ``suffix_lens`` is given (the kernel reads each length on the device).
    split_factor : :func:`split_cap`'s factor (default ``SPLIT_FACTOR``).
    walk : let the last level's items walk their sequences' suffixes where
        :func:`walk_suffixes` allows it (then there are no suffix items).

    Returns
    -------
    items : int32 ``[num_items, 12]`` (prefix items first: they are the long ones).
    nslot : number of partial slots.
    """
    r = hq // hkv
    phases = []  # (src, groups, rows per group, row blocks, tiles, keylen)
    for src, (g, p) in enumerate(levels):
        rows = (batch // g) * r
        phases.append((src, g, rows, _row_blocks(rows), math.ceil(p / TILE), p))
    if suffix > 0:
        phases.append((len(levels), batch, r, _row_blocks(r), math.ceil(suffix / TILE), -1 if ragged else suffix))
    cap = split_cap(sum(g * hkv * nt * tile_cost(kv) for _, g, _, bl, nt, _ in phases for _, kv in bl), num_sms,
                    split_factor)
    walked = walk and walk_suffixes(phases, len(levels), r, cap)
    if walked:
        phases.pop()
    parts, slot = [np.zeros((0, ITEM_INTS), dtype=np.int64)], 0
    for src, g, rows, blocks, ntiles, keylen in phases:
        kv_all = all(kv for _, kv in blocks)
        nsplit = num_splits(ntiles, kv_all, cap)
        width = SLOTS_PER_SPLIT if any(kv for _, kv in blocks) else 1
        per = math.ceil(ntiles / nsplit)
        t0, t1, j, gi, h, row0, kv = _split_grid(nsplit, per, ntiles, (g, hkv), blocks)
        seq0 = gi if src == len(levels) else gi * (batch // g)
        wk = 0
        if walked and src == len(levels) - 1:  # the leaf: one unsplit kv-split block, then its suffixes
            wk = len(levels) | (WALK_RAGGED if ragged else 0) | (suffix << WALK_CAP_SHIFT)
            t1 = t1 + (rows // r) * math.ceil(suffix / TILE)
        parts.append(_items(len(j), flags=kv, src=src, gidx=gi, head=h, seq0=seq0, nrows=rows, row0=row0,
                            t0=t0, t1=t1, keylen=keylen, slot=slot + width * j, walk=wk))
        slot += width * nsplit
    return np.concatenate(parts).astype(np.int32), slot


# A leaf item walks its sequences' suffixes only if it has at least this many tiles of its own:
# each consumer warpgroup must meet a tile with keys for every row (a leaf tile) before any
# suffix tile, whose scores are -inf on the other sequences' rows (stacked.cuh mask_rows).
WALK_MIN_LEAF_TILES = NWG


def walk_suffixes(phases, nlevels: int, r: int, cap: float) -> bool:
    """Whether the last prefix level's items take over the suffix phase.

    A tree's leaf groups are small (tree-3level: 4 sequences of 4 rows, 2 tiles) and each of
    its sequences' suffixes is one more small item (1 tile): each item pays a query gather,
    an epilogue and a partial state. A leaf item that walks on through its sequences'
    suffixes (tile by tile, each suffix tile masked to its sequence's rows) reads the same
    bytes in a quarter of the items and leaves each row one state fewer to merge (triton's
    leaf programs do the same, ``attn/triton``). Taken when the leaf is one unsplit kv-split
    block of at least :data:`WALK_MIN_LEAF_TILES` tiles and the walked item, like the suffix
    items it replaces, needs no split.

    ``phases``: :func:`level_plan`'s ``(src, groups, rows, blocks, tiles, keylen)``, the
    suffix last.
    """
    if nlevels == 0 or len(phases) != nlevels + 1:
        return False
    _, _, rows, blocks, ntiles, _ = phases[nlevels - 1]
    s_tiles = phases[nlevels][4]
    walked = ntiles + (rows // r) * s_tiles
    return (len(blocks) == 1 and blocks[0][1] and ntiles >= WALK_MIN_LEAF_TILES
            and num_splits(ntiles, True, cap) == 1 and num_splits(s_tiles, True, cap) == 1
            and walked * KV_TILE_COST <= cap)


def chunk_plan(host: dict, num_seqs: int, hq: int, hkv: int, chunk_size: int, num_sms: int,
               split_factor: float | None = None):
    """Items of ``chunk_attention`` for one ChunkTable (its ``host`` numpy arrays).

    Shared chunks read by the same range of sequences are consecutive on those sequences'
    paths; each such run becomes one chunk-first group (rows ``[begin, end) x r``). A
    sequence's private chunks become its sequence-first items. Built with numpy but for a
    loop over the groups' scalars (a serving loop may build and plan a table every step:
    ``bench/host_time.py``).

    Returns
    -------
    items : int32 ``[num_items, 12]``; chunk_list : int32 (the items' chunk ids, concatenated);
    nslot : number of partial slots.
    """
    r = hq // hkv
    tpc = math.ceil(chunk_size / TILE)
    sc, sh, sb, se = host["seq_chunks"], host["shared_chunks"], host["shared_begin"], host["shared_end"]
    groups = _chunk_groups(sc, sh, sb, se)
    pc = np.asarray(host["private_chunks"]).reshape(num_seqs, -1)
    pmask = pc >= 0
    pcount = pmask.sum(axis=1).astype(np.int64)
    total = sum(hkv * len(ch) * tpc * tile_cost(kv) for (b, e), ch in groups.items()
                for _, kv in _row_blocks((e - b) * r))
    total += sum(hkv * n * tpc * KV_TILE_COST for n in pcount.tolist())
    cap = split_cap(total, num_sms, split_factor)
    chunk_list: list = []
    nxt = np.zeros(num_seqs, dtype=np.int64)  # first free slot of each row
    # Chunk-first items. Each group's scalars first, in order: outer ranges first, so nested
    # groups stack their slots above their ancestors'. Then every group's items at once: its
    # splits j, then heads, then row blocks.
    gs = []  # (begin, rows, chunk list offset, tiles, splits, tiles per split, first slot, slot width)
    for (b, e) in sorted(groups, key=lambda be: (be[0], -be[1])):
        chunks = groups[(b, e)]
        rows = (e - b) * r
        blocks = _row_blocks(rows)
        ntiles = len(chunks) * tpc
        nsplit = num_splits(ntiles, all(kv for _, kv in blocks), cap)
        width = SLOTS_PER_SPLIT if any(kv for _, kv in blocks) else 1
        base = int(nxt[b:e].max())
        gs.append((b, rows, len(chunk_list), ntiles, nsplit, math.ceil(ntiles / nsplit), base, width, len(blocks)))
        chunk_list += chunks
        nxt[b:e] = base + width * nsplit
    g_b, g_rows, g_off, g_nt, g_ns, g_per, g_base, g_width, g_nblk = (
        np.asarray(col, dtype=np.int64).reshape(-1) for col in (zip(*gs) if gs else [()] * 9))
    cnt = g_ns * hkv * g_nblk
    gi = np.repeat(np.arange(len(gs)), cnt)
    q = np.arange(gi.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    k, h, j = q % g_nblk[gi], (q // g_nblk[gi]) % hkv, q // (g_nblk[gi] * hkv)
    rows = g_rows[gi]
    row0 = np.where(rows <= TILE, 0, k * BLOCK_ROWS)
    parts = [_items(gi.size, flags=(rows - row0 <= TILE).astype(np.int64), gidx=g_off[gi], head=h, seq0=g_b[gi],
                    nrows=rows, row0=row0, t0=j * g_per[gi], t1=np.minimum(g_nt[gi], (j + 1) * g_per[gi]),
                    slot=g_base[gi] + g_width[gi] * j)]
    # Sequence-first items: for each sequence with private chunks, its splits j, then heads.
    seqs = np.flatnonzero(pcount > 0)
    nt = pcount[seqs] * tpc
    ns = np.maximum(1, np.minimum(np.ceil(nt * KV_TILE_COST / cap).astype(np.int64), nt // MIN_TILES_KV))
    per = -(-nt // ns)
    off = len(chunk_list) + np.concatenate([[0], np.cumsum(pcount[seqs])[:-1]]).astype(np.int64)
    base = nxt[seqs]
    unit = np.repeat(np.arange(len(seqs)), ns)          # one per (sequence, split)
    j = np.arange(len(unit)) - np.repeat(np.cumsum(ns) - ns, ns)
    unit, j, h = np.repeat(unit, hkv), np.repeat(j, hkv), np.tile(np.arange(hkv), len(unit))
    parts.append(_items(len(unit), flags=FLAG_KV_SPLIT, gidx=off[unit], head=h, seq0=seqs[unit], nrows=r,
                        t0=j * per[unit], t1=np.minimum(nt[unit], (j + 1) * per[unit]),
                        slot=base[unit] + SLOTS_PER_SPLIT * j))
    nxt[seqs] = base + SLOTS_PER_SPLIT * ns
    chunk_ids = np.concatenate([np.asarray(chunk_list, dtype=np.int64), pc[pmask].astype(np.int64)])
    nslot = int(nxt.max()) if num_seqs else 0
    return (np.concatenate(parts).astype(np.int32),
            (chunk_ids if chunk_ids.size else np.zeros(1, dtype=np.int64)).astype(np.int32), nslot)


def _chunk_groups(sc, sh, sb, se) -> dict:
    """``{(begin, end): [chunk ids]}``: the shared chunks read by sequences ``[begin, end)``,
    in the order of those sequences' paths (``seq_chunks`` of the first of them)."""
    rng = {int(c): (int(b), int(e)) for c, b, e in zip(np.asarray(sh).tolist(), np.asarray(sb).tolist(),
                                                       np.asarray(se).tolist())}
    groups: dict = {}
    for be in rng.values():
        groups.setdefault(be, None)
    for be in groups:
        row = sc[be[0]]
        groups[be] = [c for c in row[row >= 0].tolist() if rng.get(c) == be]
    return groups


def mark_direct(items: np.ndarray, num_seqs: int, hkv: int, r: int) -> tuple[np.ndarray, bool]:
    """Set ``FLAG_DIRECT`` on every item when every query row is in exactly one item.

    Then no row has a second partial state to merge: each item writes its rows' final output
    and LSE itself (a kv-split item first combines its two warpgroups' states in shared
    memory), and the op needs no partial buffers, no ``-inf`` fill and no merge launch. That
    is decode with nothing shared and no split-K (no-share). Rows in no item (a sequence with
    no chunks) would be left unwritten, so they make the plan indirect, as do kv-split items
    of more than :data:`DIRECT_KV_ROWS` rows.

    Returns ``(items, direct)``; ``items`` is a copy when flags were set.
    """
    if items.shape[0] == 0 or num_seqs == 0:
        return items, False
    kv = (items[:, F_FLAGS] & FLAG_KV_SPLIT) != 0
    if (items[kv, F_NROWS] - items[kv, F_ROW0] > DIRECT_KV_ROWS).any():
        return items, False
    total = num_seqs * hkv * r
    if int(_item_row_counts(items).sum()) != total:  # some row in no item or in two: not direct
        return items, False
    _, rows = _item_rows(items, hkv, r)
    if not (np.bincount(rows, minlength=total) == 1).all():
        return items, False
    out = items.copy()
    out[:, F_FLAGS] |= FLAG_DIRECT
    return out, True


def _item_row_counts(items: np.ndarray) -> np.ndarray:
    """How many query rows each item's warpgroups hold (int64)."""
    it = items.astype(np.int64)
    kv = (it[:, F_FLAGS] & FLAG_KV_SPLIT) != 0
    row0 = it[:, F_ROW0]
    return np.maximum(np.minimum(it[:, F_NROWS], row0 + np.where(kv, TILE, BLOCK_ROWS)) - row0, 0)


def _item_rows(items: np.ndarray, hkv: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """``(item, rows)``: for each query row that an item's warpgroups hold, the item's index
    and the global row (``b * hq + head``), concatenated in item order (int64)."""
    it = items.astype(np.int64)
    row0 = it[:, F_ROW0]
    count = _item_row_counts(it)
    item = np.repeat(np.arange(len(it)), count)
    j = row0[item] + np.arange(item.size) - np.repeat(np.cumsum(count) - count, count)
    return item, ((it[item, F_SEQ0] + j // r) * hkv + it[item, F_HEAD]) * r + j % r


def clear_unwritten(items: np.ndarray, nslot: int, num_seqs: int, hkv: int, r: int) -> tuple[np.ndarray, bool]:
    """Set ``FLAG_CLEAR_NEXT`` where an item's ``slot + 1`` is written by no item, and say
    whether every ``(slot, row)`` of the partial lses is then written by the launch.

    A split of a phase with kv-split items owns two slots; a lone kv-split item's warpgroups
    write both, but a paired, solo or row-split one writes only the first. Each such item
    whose rows' ``slot + 1`` no item writes writes ``-inf`` there itself (4 bytes a row). When
    every ``(slot, row)`` is then written, the op allocates the partial lses without the
    ``-inf`` fill (a kernel launch, ~2 us on an H200); otherwise (a chunk table whose
    sequences have different numbers of slots) it still fills them.

    Returns ``(items, covered)``; ``items`` is a copy when flags were set.
    """
    rows_total = num_seqs * hkv * r
    if items.shape[0] == 0 or nslot == 0 or rows_total == 0:
        return items, False
    if (items[:, F_FLAGS] & FLAG_DIRECT).any():
        return items, False
    item, rows = _item_rows(items, hkv, r)
    slot = items[:, F_SLOT].astype(np.int64)
    flags = items[:, F_FLAGS]
    both = ((flags & FLAG_KV_SPLIT) != 0) & ((flags & (FLAG_PAIR | FLAG_PAIRED | FLAG_SOLO)) == 0)  # a lone kv-split item
    written = np.zeros(nslot * rows_total, dtype=bool)
    written[slot[item] * rows_total + rows] = True
    nxt = (slot[item] + 1) * rows_total + rows  # each row's place in its item's slot + 1
    written[nxt[both[item]]] = True
    # Two items never write one (slot, row), so the items that clear slot + 1 clear disjoint
    # places, and each can be decided against what the launch writes without the others.
    cand = ~both & (slot + 1 < nslot)
    c = cand[item]
    hits = np.bincount(item[c], weights=written[nxt[c]], minlength=len(slot))
    clear = np.flatnonzero(cand & (hits == 0))
    isclear = np.zeros(len(slot), dtype=bool)
    isclear[clear] = True
    written[nxt[isclear[item]]] = True
    out = items
    if clear.size:
        out = items.copy()
        out[clear, F_FLAGS] |= FLAG_CLEAR_NEXT
    return out, bool(written.all())


# Fixed cost of an item (query wait, epilogue, pipeline bubbles), in kv-split tiles (see
# ROW_TILE_COST).
ITEM_OVERHEAD = 1.7
# A pair (pair_kv_items) in the schedule: PAIR_TILE_COST per tile plus PAIR_OVERHEAD, the
# lone items' costs. The timelines (logs/0053-0055-tk-pairs.log, 0056-0058-tk-pair-caps.log)
# put pairs of 4-16-row items at 1.43 + 0.88 per tile and of 64-row items at 1.67 per tile,
# but scheduling with those (H200, one machine per comparison) was no better overall: flat
# 0.88 / 1.43 made gqa-8b 0.4-4.1 % faster and tree-3level 1.2-3.8 % slower (runs 0063 / 0064,
# 0066-0068), and 0.88 rising to 1.67 at 64 rows much the same (runs 0066 / 0067: geometric
# mean over the 24 cases 0.3 % slower than these costs). ATTN_TK_PLAN_COSTS's 4th and 5th numbers.
PAIR_TILE_COST, PAIR_OVERHEAD = KV_TILE_COST, ITEM_OVERHEAD


def env_floats(value: str) -> tuple[float, ...]:
    """The comma-separated numbers of a tuning variable, or ``()`` when one is not a finite number."""
    try:
        parts = tuple(float(x) for x in value.split(","))
    except ValueError:
        return ()
    return parts if all(math.isfinite(x) for x in parts) else ()


def costs_from_env(value: str | None) -> tuple[float, ...]:
    """``(ROW_TILE_COST, KV_TILE_COST, ITEM_OVERHEAD, PAIR_TILE_COST, PAIR_OVERHEAD)`` from
    ``ATTN_TK_PLAN_COSTS="row,kv,item[,pair_tile,pair_item]"`` (with three numbers the pairs
    cost what lone kv-split items do).

    A tuning knob (``bench/tk_variants.sh`` passes it as a variant word), read once at import:
    every plan of the process uses it. Unset: the measured defaults above.
    """
    if not value:
        return DEFAULT_COSTS
    parts = env_floats(value)
    if len(parts) == 3:
        parts += (parts[1], parts[2])
    if (len(parts) != 5 or not all(x > 0 for x in parts[:2] + parts[3:4])
            or not (parts[2] >= 0 and parts[4] >= 0)):
        raise ValueError(f"ATTN_TK_PLAN_COSTS={value!r}: expected 'row,kv,item' or "
                         "'row,kv,item,pair_tile,pair_item' costs, tile costs positive and item "
                         "costs >= 0, e.g. '1.2,1.0,1.0'")
    return parts


DEFAULT_COSTS = (ROW_TILE_COST, KV_TILE_COST, ITEM_OVERHEAD, PAIR_TILE_COST, PAIR_OVERHEAD)
(ROW_TILE_COST, KV_TILE_COST, ITEM_OVERHEAD,
 PAIR_TILE_COST, PAIR_OVERHEAD) = costs_from_env(os.environ.get("ATTN_TK_PLAN_COSTS"))
