"""The online-softmax step shared by every kernel: one block of keys into a running state.

The running state of a tile of query rows is ``(m, l, acc)`` in base 2: ``m`` the largest
scaled score seen (a finite floor of -1e30 instead of -inf, so that a fully masked block
leaves the state unchanged instead of producing NaN), ``l = sum 2^(s - m)`` and
``acc = sum 2^(s - m) v``. ``qk_scale`` is ``scale * log2(e)``.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def empty_state(ROWS: tl.constexpr, D: tl.constexpr):
    """The running state ``(m, l, acc)`` of ``ROWS`` query rows before any key."""
    return tl.full([ROWS], -1.0e30, tl.float32), tl.zeros([ROWS], tl.float32), tl.zeros([ROWS, D], tl.float32)


@triton.jit
def attend_block(q, k_ptrs, v_ptrs, n_ok, m_i, l_i, acc, qk_scale,
                 MASKED: tl.constexpr, IEEE: tl.constexpr):
    """Attend ``q [M, D]`` to one block of keys: ``k_ptrs [D, N]``, ``v_ptrs [N, D]``;
    ``n_ok [N]`` marks the valid keys (only read when ``MASKED``: full blocks skip the
    masks). Returns the updated ``(m, l, acc)``."""
    return attend_rows(q, k_ptrs, v_ptrs, n_ok, n_ok, m_i, l_i, acc, qk_scale, MASKED, False, IEEE)


@triton.jit
def attend_rows(q, k_ptrs, v_ptrs, n_ok, r_ok, m_i, l_i, acc, qk_scale,
                MASKED: tl.constexpr, ROWS: tl.constexpr, IEEE: tl.constexpr):
    """:func:`attend_block` for the rows ``r_ok [M]`` only when ``ROWS`` (the keys of one
    sequence in a tile that stacks several): the other rows' scores are -inf, so their
    state stays as it was (``p = 0``, ``alpha = 1``). Unless ``MASKED``, every key is valid."""
    if MASKED:
        k = tl.load(k_ptrs, mask=n_ok[None, :], other=0.0)
    else:
        k = tl.load(k_ptrs)
    m_new, alpha, p, l_i = _softmax_step(q, k, n_ok, r_ok, m_i, l_i, qk_scale, MASKED, ROWS, IEEE)
    if MASKED:
        v = tl.load(v_ptrs, mask=n_ok[:, None], other=0.0)
    else:
        v = tl.load(v_ptrs)
    return m_new, l_i, _accumulate(acc, alpha, p, v, IEEE)


@triton.jit
def attend_rows_tma(q, kd, vd, row, col, n_ok, r_ok, m_i, l_i, acc, qk_scale,
                    MASKED: tl.constexpr, ROWS: tl.constexpr, IEEE: tl.constexpr):
    """:func:`attend_rows` with the key block read by the tensor memory accelerator: ``kd``,
    ``vd`` descriptors of ``[N, D]`` blocks at ``(row, col)``. One instruction moves a block
    into shared memory, instead of a copy per 16 bytes and thread, each with its address
    built. A masked block's invalid values may be any bits (another group's keys, or whatever
    lies past a ragged length): their scores are masked, and their values zeroed, since
    ``0 * NaN`` would reach the output."""
    k = kd.load([row, col])
    m_new, alpha, p, l_i = _softmax_step(q, k.T, n_ok, r_ok, m_i, l_i, qk_scale, MASKED, ROWS, IEEE)
    v = vd.load([row, col])
    if MASKED:
        v = tl.where(n_ok[:, None], v, 0.0)
    return m_new, l_i, _accumulate(acc, alpha, p, v, IEEE)


@triton.jit
def _softmax_step(q, k, n_ok, r_ok, m_i, l_i, qk_scale,
                  MASKED: tl.constexpr, ROWS: tl.constexpr, IEEE: tl.constexpr):
    """Scores of ``q [M, D]`` against ``k [D, N]`` into the running max and sum: returns
    ``(m_new, alpha, p, l_new)``, ``alpha`` the factor rescaling the old state."""
    if IEEE:
        s = tl.dot(q, k, input_precision="ieee")
    else:
        s = tl.dot(q, k)
    s = s * qk_scale
    if ROWS and MASKED:
        s = tl.where(r_ok[:, None] & n_ok[None, :], s, float("-inf"))
    elif ROWS:
        s = tl.where(r_ok[:, None], s, float("-inf"))
    elif MASKED:
        s = tl.where(n_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    return m_new, alpha, p, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _accumulate(acc, alpha, p, v, IEEE: tl.constexpr):
    """``acc * alpha + p @ v``."""
    # Rescale first and let the dot accumulate into acc: wgmma then adds in place instead
    # of producing a second [M, D] tile to add (the order of Triton's Hopper attention tutorial).
    acc = acc * alpha[:, None]
    if IEEE:
        return tl.dot(p, v, acc, input_precision="ieee")
    return tl.dot(p.to(v.dtype), v, acc)


@triton.jit
def merge_state(m_i, l_i, acc, o, lse):
    """Fold a normalised partial state ``(o [M, D], lse [M] natural log)`` into ``(m, l, acc)``."""
    lse2 = lse * 1.4426950408889634
    m_new = tl.maximum(m_i, lse2)
    alpha = tl.exp2(m_i - m_new)
    w = tl.exp2(lse2 - m_new)
    return m_new, l_i * alpha + w, acc * alpha[:, None] + o * w[:, None]


@triton.jit
def finish(m_i, l_i, acc):
    """Normalised output and natural-log LSE of a state; ``0`` and ``-inf`` with no keys."""
    has = l_i > 0.0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    return out, lse


@triton.jit
def late(x, state):
    """``x`` (integer row indices) made to depend on ``state`` (a row vector the key loop
    produced; ``0 * state`` adds 0), so that the compiler builds the row addressing of the
    output store after the loop instead of keeping the copy it built for the query load live
    through it: in a 128-row tile that copy is 8+ int64 registers per thread, and with a 16-bit
    store it took the prefix kernel from 167 to 200 registers (Triton 3.6, sm_90a), too many
    for a decode CTA to share its SM."""
    return x + (state * 0.0).to(tl.int32)
