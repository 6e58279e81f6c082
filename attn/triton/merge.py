"""LSE merge of partial attention states (the combine step of split-K and of both papers).

``out = sum_k w_k out_k`` with ``w_k = exp(lse_k - lse)`` and ``lse = log sum_k exp(lse_k)``,
in one pass over the ``K`` states with a running maximum, float32 throughout. A row whose
states are all empty (``lse = -inf``) gets ``out = 0`` and ``lse = -inf``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import config

LOG2E = 1.4426950408889634


@triton.jit
def _merge_kernel(O, L, OUT, LSE, num_states, num_rows, stride_ok, stride_lk,
                  BLOCK_R: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    r_ok = offs_r < num_rows
    d_ok = offs_d < D
    rows = offs_r.to(tl.int64)
    m = tl.full([BLOCK_R], -1.0e30, tl.float32)
    l = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for k in range(0, num_states):
        lse = tl.load(L + k * stride_lk + rows, mask=r_ok, other=float("-inf")) * 1.4426950408889634
        o = tl.load(O + k * stride_ok + rows[:, None] * D + offs_d[None, :],
                    mask=r_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        m_new = tl.maximum(m, lse)
        alpha = tl.exp2(m - m_new)
        w = tl.exp2(lse - m_new)
        l = l * alpha + w
        acc = acc * alpha[:, None] + o * w[:, None]
        m = m_new
    has = l > 0.0
    out = acc / tl.where(has, l, 1.0)[:, None]
    tl.store(OUT + rows[:, None] * D + offs_d[None, :], out.to(OUT.dtype.element_ty),
             mask=r_ok[:, None] & d_ok[None, :])
    tl.store(LSE + rows, tl.where(has, (m + tl.log2(tl.where(has, l, 1.0))) * 0.6931471805599453, float("-inf")), mask=r_ok)


def launch_merge(outs: torch.Tensor, lses: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> None:
    """Merge ``outs [K, R, D]`` (any float dtype) with ``lses [K, R]`` (float32) into
    ``out [R, D]`` (its own dtype) and ``lse [R]`` (float32). All contiguous."""
    k, r, d = outs.shape
    if r == 0:
        return
    block_d = triton.next_power_of_2(d)
    # Enough programs for ~4 per SM: each walks its K states one after another, so few
    # large programs leave the memory pipe waiting on each state's latency.
    per_program = config.next_pow2(max(1, r // (4 * config.target_programs(outs.device)))) // 2 or 1
    block_r = max(1, min(64, 4096 // block_d, per_program))
    _merge_kernel[(triton.cdiv(r, block_r),)](
        outs, lses, out, lse, k, r, outs.stride(0), lses.stride(0),
        BLOCK_R=block_r, D=d, BLOCK_D=block_d, num_warps=4,
    )


def merge_states(outs: torch.Tensor, lses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``merge_states`` of the public API: ``outs [K, ..., D]``, ``lses [K, ...]``."""
    k, lead, d = outs.shape[0], outs.shape[1:-1], outs.shape[-1]
    o = outs.reshape(k, -1, d).contiguous()
    l = lses.reshape(k, -1).to(torch.float32).contiguous()
    out = torch.empty(o.shape[1:], dtype=outs.dtype, device=outs.device)
    lse = torch.empty(o.shape[1], dtype=torch.float32, device=outs.device)
    launch_merge(o, l, out, lse)
    return out.view(*lead, d), lse.view(lead)
