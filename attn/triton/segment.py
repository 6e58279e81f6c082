"""Stacked-query attention to contiguous key segments, split along the keys (split-K).

One kernel serves both phases of ``shared_prefix_attention`` (Hydragen, arXiv 2402.05099):

- a prefix level ``[G, P, Hkv, D]``: program ``(g, kvh, split, row tile)`` stacks the queries
  of the ``B/G`` sequences of group ``g`` times the ``Hq/Hkv`` query heads of kv head ``kvh``
  into one ``[rows, D]`` matrix and attends it to its slice of the prefix with ``tl.dot``,
  so the prefix is read once per group (inter-sequence batching), not once per sequence;
- the suffixes ``[B, S, Hkv, D]``: the same with ``G = B`` (one sequence per group, its GQA
  group of heads as rows) and a per-group length (``suffix_lens``): decode attention with
  split-K for long suffixes;
- a deepest prefix level of few rows per group (a tree's leaves) with the suffixes of its
  groups' sequences (``LEAF_SUFFIX``): after the level's keys, the program walks each of its
  sequences' suffix keys with the other sequences' rows masked. One launch and one partial
  state fewer, and the suffix bytes stream from programs that fit beside the root level's,
  instead of from a launch that waits for SMs until it ends.

Each program writes one partial state (normalised float32 output and natural-log LSE) to
``parts[part_base + split]``; :mod:`.merge` combines all partial states.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import config
from .config import Tiles
from .tile import attend_block, attend_rows, attend_rows_tma, empty_state, finish, late, merge_state

LOG2E = 1.4426950408889634


@triton.jit
def _stacked_rows(offs_m, g, kvh, seqs_per_group, ratio):
    """Stacked row j of group g is (sequence g*spg + j // ratio, query head kvh*ratio + j % ratio)."""
    row_ok = offs_m < seqs_per_group * ratio
    seq = (g * seqs_per_group + offs_m // ratio).to(tl.int64)
    head = kvh * ratio + offs_m % ratio
    return row_ok, seq, head


@triton.jit
def _segment_kernel(
    Q, K, V, LENS, SK, SV, SLENS, PO, PL, OUT, LSE,
    stride_qb, stride_qh,
    stride_kg, stride_kp, stride_kh,
    stride_vg, stride_vp, stride_vh,
    stride_skb, stride_skp, stride_skh,
    stride_svb, stride_svp, stride_svh,
    stride_pp, stride_pb, stride_ph,
    num_kv_heads, seqs_per_group, ratio, seg_len, length, split_len, suffix_cap, part_base, qk_scale,
    TMA: tl.constexpr, HAS_LENS: tl.constexpr, LEAF_SUFFIX: tl.constexpr, HAS_SLENS: tl.constexpr, SUFFIX_EVEN: tl.constexpr, FOLD: tl.constexpr, FOLD_PARTS: tl.constexpr, EVEN: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    tile = tl.program_id(2)
    g = pid // num_kv_heads
    kvh = pid % num_kv_heads

    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok, seq, head = _stacked_rows(offs_m, g, kvh, seqs_per_group, ratio)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + seq[:, None] * stride_qb + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)

    if HAS_LENS:
        length = tl.load(LENS + g)
    start = split * split_len
    end = tl.minimum(start + split_len, length)

    m_i, l_i, acc = empty_state(BLOCK_M, D)
    if TMA:
        # K, V: descriptors of [G * L, Hkv * D]; a block is rows g * L + n, columns kvh * D.
        for n0 in range(start, end, BLOCK_N):
            n_ok = n0 + tl.arange(0, BLOCK_N) < end
            m_i, l_i, acc = attend_rows_tma(q, K, V, g * seg_len + n0, kvh * D, n_ok, n_ok, m_i, l_i, acc,
                                            qk_scale, not EVEN, False, IEEE)
    else:
        # Pointers are built once and advanced by a scalar: no per-block index arithmetic.
        offs_n = start + tl.arange(0, BLOCK_N)
        k_ptrs = (K + g.to(tl.int64) * stride_kg + kvh * stride_kh
                  + offs_n.to(tl.int64)[None, :] * stride_kp + offs_d[:, None])
        v_ptrs = (V + g.to(tl.int64) * stride_vg + kvh * stride_vh
                  + offs_n.to(tl.int64)[:, None] * stride_vp + offs_d[None, :])
        for n0 in range(start, end, BLOCK_N):
            m_i, l_i, acc = attend_block(q, k_ptrs, v_ptrs, n0 + tl.arange(0, BLOCK_N) < end, m_i, l_i, acc,
                                         qk_scale, not EVEN, IEEE)
            k_ptrs += BLOCK_N * stride_kp
            v_ptrs += BLOCK_N * stride_vp
    if LEAF_SUFFIX:
        # The suffixes of this tile's sequences [j0, j1) of the group, in one flat loop over
        # their key blocks (block b: sequence j0 + b // per_seq), so that the addresses
        # follow from the loop counter and the pipeliner prefetches across sequences.
        j0 = (tile * BLOCK_M) // ratio
        j1 = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // ratio + 1, seqs_per_group)
        per_seq = tl.cdiv(suffix_cap, BLOCK_N)
        local = offs_m // ratio
        # Offsets within a block, built once: a block's pointers are then a scalar base plus
        # these, instead of a [D, N] int64 product per block (32-bit t0 * stride: the launch
        # asserts that a suffix spans < 2**31 elements).
        sk_offs = tl.arange(0, BLOCK_N)[None, :] * stride_skp + offs_d[:, None]
        sv_offs = tl.arange(0, BLOCK_N)[:, None] * stride_svp + offs_d[None, :]
        for blk in range(0, (j1 - j0) * per_seq):
            j = j0 + blk // per_seq
            s = (g * seqs_per_group + j).to(tl.int64)
            if HAS_SLENS:
                slen = tl.load(SLENS + s)
            else:
                slen = suffix_cap
            t0 = (blk % per_seq) * BLOCK_N
            n_ok = t0 + tl.arange(0, BLOCK_N) < slen
            # Even suffixes (no lengths, whole blocks) need no key mask: only the row mask.
            if TMA:
                m_i, l_i, acc = attend_rows_tma(q, SK, SV, s.to(tl.int32) * suffix_cap + t0, kvh * D, n_ok, local == j,
                                                m_i, l_i, acc, qk_scale, not SUFFIX_EVEN, True, IEEE)
            else:
                sk_ptrs = SK + (s * stride_skb + kvh * stride_skh + t0 * stride_skp) + sk_offs
                sv_ptrs = SV + (s * stride_svb + kvh * stride_svh + t0 * stride_svp) + sv_offs
                m_i, l_i, acc = attend_rows(q, sk_ptrs, sv_ptrs, n_ok, local == j, m_i, l_i, acc, qk_scale,
                                            not SUFFIX_EVEN, True, IEEE)
    if BLOCK_M >= 64:
        row_ok, seq, head = _stacked_rows(late(offs_m, l_i), g, kvh, seqs_per_group, ratio)
    if FOLD:
        # Last phase (one split): fold in the earlier phases' states of these rows and
        # write the final output, instead of writing one more partial state to merge.
        # Unrolled, so that the loads of all the states are in flight together.
        for k in tl.static_range(FOLD_PARTS):
            prow = k * stride_pp + seq * stride_pb + head * stride_ph
            o = tl.load(PO + prow[:, None] * D + offs_d[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
            lse_k = tl.load(PL + prow, mask=row_ok, other=float("-inf"))
            m_i, l_i, acc = merge_state(m_i, l_i, acc, o, lse_k)
        out, lse = finish(m_i, l_i, acc)
        orow = seq * stride_pb + head * stride_ph
        tl.store(OUT + orow[:, None] * D + offs_d[None, :], out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
        tl.store(LSE + orow, lse, mask=row_ok)
    else:
        out, lse = finish(m_i, l_i, acc)
        prow = (part_base + split).to(tl.int64) * stride_pp + seq * stride_pb + head * stride_ph
        tl.store(PO + prow[:, None] * D + offs_d[None, :], out.to(PO.dtype.element_ty), mask=row_ok[:, None])
        tl.store(PL + prow, lse, mask=row_ok)


def launch_segment(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens, parts_o: torch.Tensor,
                   parts_lse: torch.Tensor, part_base: int, splits: int, split_len: int, scale: float,
                   tiles: Tiles, fold_into=None, suffix=None, kind: str = "prefix", overlap: bool = False,
                   suffix_critical: bool = True) -> None:
    """Attend ``q [B, Hq, D]`` to the segments ``k, v [G, L, Hkv, D]`` (``G`` divides ``B``).

    Writes partial states ``parts_o[part_base + s] [B, Hq, D]`` (normalised; float32 or
    :func:`config.partial_dtype`) and
    ``parts_lse[part_base + s] [B, Hq]`` for each split ``s < splits`` of ``split_len`` keys.
    ``lens`` (int32 ``[G]`` on the device, or None for ``L``) limits each group's keys.
    ``parts_o``/``parts_lse`` must be contiguous ``[NP, B, Hq, (D)]``.

    ``fold_into = (out [B, Hq, D], lse [B, Hq])``, contiguous, with ``splits == 1``: merge the
    states ``parts[:part_base]`` into this phase's and write the final result there instead.

    ``suffix = (suffix_k, suffix_v [B, S, Hkv, D], suffix_lens or None)``, with ``splits ==
    1``: after its keys, each group also attends each of its sequences to its own suffix
    (a tree's leaf level and the suffixes in one launch and one state); a sequence's suffix
    keys must lie within ``2**31`` elements (32-bit offsets inside the loop).

    ``kind`` names the launch, ``overlap`` says whether it runs beside others and
    ``suffix_critical`` whether the suffix is the longer phase, for :func:`config.use_tma`.
    """
    b, hq, d = q.shape
    g, length, hkv, _ = k.shape
    ratio = hq // hkv
    rows = (b // g) * ratio
    grid = (g * hkv, splits, triton.cdiv(rows, tiles.block_m))
    sk, sv, slens = suffix if suffix is not None else (k, v, None)
    assert suffix is None or (splits == 1 and sk.shape[1] * max(sk.stride(1), sv.stride(1)) < 2**31)
    kk, vv, skk, svv = k, v, sk, sv
    even = lens is None and length % tiles.block_n == 0 and split_len % tiles.block_n == 0
    if config.use_tma(q.device, q.dtype, kind, overlap, suffix_critical, masked=not even):
        descs = [tma_rows(t, tiles.block_n) for t in ((k, v, sk, sv) if suffix is not None else (k, v))]
        if all(x is not None for x in descs):
            kk, vv, *rest = descs
            skk, svv = rest if rest else (kk, vv)
    _segment_kernel[grid](
        q, kk, vv, lens if lens is not None else q, skk, svv, slens if slens is not None else q, parts_o, parts_lse,
        *(fold_into if fold_into is not None else (parts_o, parts_lse)),
        q.stride(0), q.stride(1),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        sk.stride(0), sk.stride(1), sk.stride(2),
        sv.stride(0), sv.stride(1), sv.stride(2),
        b * hq, hq, 1,
        hkv, b // g, ratio, length, length, split_len, sk.shape[1] if suffix is not None else 0, part_base,
        scale * LOG2E, TMA=kk is not k, HAS_LENS=lens is not None, LEAF_SUFFIX=suffix is not None, HAS_SLENS=slens is not None,
        SUFFIX_EVEN=suffix is not None and slens is None and sk.shape[1] % tiles.block_n == 0, FOLD=fold_into is not None,
        FOLD_PARTS=part_base if fold_into is not None else 0,
        EVEN=even, IEEE=q.dtype == torch.float32,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, D=d,
        **tiles.launch_options(),
    )


def _packed(t: torch.Tensor, first: int) -> bool:
    """Whether dimensions ``first..`` of ``t`` are row-major packed (unit-strided last)."""
    span = 1
    for i in reversed(range(first, t.dim())):
        if t.shape[i] > 1 and t.stride(i) != span:
            return False
        span *= t.shape[i]
    return True


def _row_stride(t: torch.Tensor, dims: int):
    """The one stride of the rows when the first ``dims`` dimensions of ``t`` are read as a
    row index (row-major), or None when there is none."""
    row, span = None, 1
    for i in reversed(range(dims)):
        if t.shape[i] > 1:
            if row is None:
                row, span = t.stride(i), 1
            elif t.stride(i) != row * span:
                return None
            span *= t.shape[i]
    return row if row is not None else t.stride(dims - 1)


def tma_descriptor(t: torch.Tensor, dims: int, block_n: int):
    """A tensor descriptor of ``t`` as the matrix whose rows are its first ``dims`` dimensions
    and whose columns are the others, read in ``[block_n, t.shape[-1]]`` blocks; or None when
    the layout does not allow one: evenly strided rows (16-byte multiples, from a 16-byte
    aligned base), packed columns, fewer than ``2**31`` rows."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    rows = 1
    for n in t.shape[:dims]:
        rows *= n
    if rows == 0 or rows >= 2**31 or not _packed(t, dims):
        return None
    cols = t.numel() // rows
    row = _row_stride(t, dims)
    if row is None or row < cols or (row * t.element_size()) % 16 or t.data_ptr() % 16:
        return None
    return TensorDescriptor(t, [rows, cols], [row, 1], [block_n, t.shape[-1]])


def tma_rows(t: torch.Tensor, block_n: int):
    """A tensor descriptor of ``t [G, L, H, D]`` as the matrix ``[G * L, H * D]`` read in
    ``[block_n, D]`` blocks (key ``p`` of group ``g`` and head ``h`` at row ``g * L + p``,
    column ``h * D``), or None (:func:`tma_descriptor`)."""
    return tma_descriptor(t, 2, block_n)
