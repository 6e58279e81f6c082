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
def attend_block(q, k_base, v_base, stride_kt, stride_vt, n0, end, m_i, l_i, acc, qk_scale,
                 IEEE: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """Attend ``q [M, D]`` to keys ``n0 .. n0 + BLOCK_N`` (those ``< end``) at
    ``k_base + t * stride_kt`` (values at ``v_base + t * stride_vt``); returns the updated ``(m, l, acc)``."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    n_ok = offs_n < end
    toks = offs_n.to(tl.int64)
    k = tl.load(k_base + toks[None, :] * stride_kt + offs_d[:, None], mask=n_ok[None, :], other=0.0)
    if IEEE:
        s = tl.dot(q, k, input_precision="ieee")
    else:
        s = tl.dot(q, k)
    s = tl.where(n_ok[None, :], s * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + toks[:, None] * stride_vt + offs_d[None, :], mask=n_ok[:, None], other=0.0)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


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
