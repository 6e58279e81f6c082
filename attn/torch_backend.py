"""The ``torch`` backend: both ops in plain PyTorch, on any device.

It follows the papers' decomposition rather than the naive oracle: the prefix of each
level is attended with the stacked queries of its group (one batched matmul per level),
the ragged suffixes with a masked batched matmul, and the partial states are merged by
their LSE. ``chunk_attention`` gathers each sequence's chunks (it is the reference, not a
fast path). Accumulation is float32 (float64 for float64 inputs, where it is exact up to
rounding).
"""
from __future__ import annotations

import torch

from .backend import Backend
from .problems import ChunkProblem, MergeProblem, SharedPrefixProblem


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation and lse dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def masked_softmax_state(scores: torch.Tensor, v: torch.Tensor, mask):
    """Attention state of ``scores [..., T]`` over ``v [..., T, D]`` with keys where ``mask``.

    Returns the normalised ``out [..., D]`` and ``lse [...]``; rows with no key get
    ``out = 0`` and ``lse = -inf`` (no NaN).
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
        # A masked key's weight is 0, but 0 * NaN (stale cache memory past a length) is NaN.
        v = v.masked_fill(~mask.transpose(-1, -2), 0)
    m = scores.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(scores - m)
    l = p.sum(dim=-1, keepdim=True)
    out = (p @ v) / torch.where(l > 0, l, torch.ones_like(l))
    lse = (m + torch.log(l)).squeeze(-1)
    return out, lse


def merge(outs: torch.Tensor, lses: torch.Tensor):
    """LSE merge of ``outs [K, ..., D]`` with ``lses [K, ...]`` (in ``outs``' precision)."""
    acc = _acc_dtype(outs.dtype)
    lses = lses.to(acc)
    m = lses.amax(dim=0)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    w = torch.exp(lses - m)
    l = w.sum(dim=0)
    out = (w.unsqueeze(-1) * outs.to(acc)).sum(dim=0) / torch.where(l > 0, l, torch.ones_like(l)).unsqueeze(-1)
    return out, m + torch.log(l)


class TorchBackend(Backend):
    """PyTorch reference backend: every dtype, head dim and device PyTorch supports."""

    name = "torch"
    device_types = frozenset({"cuda", "cpu"})

    def versions(self) -> dict:
        return {"torch": torch.__version__}

    def run_shared_prefix(self, p: SharedPrefixProblem):
        acc = _acc_dtype(p.dtype)
        b, hq, d = p.q.shape
        hkv = p.num_kv_heads
        r = hq // hkv
        q = p.q.to(acc)
        outs, lses = [], []
        for lk, lv in zip(p.prefix_k, p.prefix_v):
            g, plen = lk.shape[:2]
            # Inter-sequence batching: the queries of a group's B/G sequences and the r heads
            # of each kv head form one [B/G * r, D] matrix against the level's [P, D] keys.
            qg = q.view(g, b // g, hkv, r, d).permute(0, 2, 1, 3, 4).reshape(g, hkv, (b // g) * r, d)
            k = lk.permute(0, 2, 3, 1).to(acc)  # [G, Hkv, D, P]
            v = lv.permute(0, 2, 1, 3).to(acc)  # [G, Hkv, P, D]
            o, l = masked_softmax_state((qg @ k) * p.scale, v, None)
            outs.append(o.view(g, hkv, b // g, r, d).permute(0, 2, 1, 3, 4).reshape(b, hq, d))
            lses.append(l.view(g, hkv, b // g, r).permute(0, 2, 1, 3).reshape(b, hq))
        if p.suffix_k is not None and p.suffix_capacity > 0:
            s = p.suffix_capacity
            qs = q.view(b, hkv, r, d)
            k = p.suffix_k.permute(0, 2, 3, 1).to(acc)  # [B, Hkv, D, S]
            v = p.suffix_v.permute(0, 2, 1, 3).to(acc)  # [B, Hkv, S, D]
            mask = None
            if p.suffix_lens is not None:
                pos = torch.arange(s, device=p.device)
                mask = (pos[None, :] < p.suffix_lens[:, None].long()).view(b, 1, 1, s)
            o, l = masked_softmax_state((qs @ k) * p.scale, v, mask)
            outs.append(o.reshape(b, hq, d))
            lses.append(l.reshape(b, hq))
        return self._finish(outs, lses, p.q)

    def run_chunk(self, p: ChunkProblem):
        acc = _acc_dtype(p.dtype)
        t = p.table
        n, hq, d = p.q.shape
        hkv, c = p.num_kv_heads, p.chunk_size
        r = hq // hkv
        width = t.seq_chunks.shape[1]
        if n == 0 or width == 0:
            return self._finish([], [], p.q)
        ids = t.seq_chunks.long()
        valid = ids >= 0
        safe = ids.clamp(min=0)
        # [N, W, Hkv, C, D] -> [N, Hkv, W*C, D]: each sequence's chunks side by side.
        k = p.k_chunks[safe].permute(0, 2, 1, 3, 4).reshape(n, hkv, width * c, d).to(acc)
        v = p.v_chunks[safe].permute(0, 2, 1, 3, 4).reshape(n, hkv, width * c, d).to(acc)
        lens = torch.where(valid, t.chunk_lens.long()[safe], torch.zeros_like(safe))  # [N, W]
        mask = (torch.arange(c, device=p.device)[None, None, :] < lens[:, :, None]).reshape(n, 1, 1, width * c)
        qs = p.q.to(acc).view(n, hkv, r, d)
        o, l = masked_softmax_state((qs @ k.transpose(-1, -2)) * p.scale, v, mask)
        return self._finish([o.reshape(n, hq, d)], [l.reshape(n, hq)], p.q)

    def run_merge(self, p: MergeProblem):
        out, lse = merge(p.outs, p.lses)
        return out.to(p.dtype), lse.to(_acc_dtype(p.dtype))

    @staticmethod
    def _finish(outs, lses, q):
        if not outs:
            return torch.zeros_like(q), torch.full(q.shape[:2], float("-inf"), dtype=_acc_dtype(q.dtype), device=q.device)
        if len(outs) == 1:
            out, lse = outs[0], lses[0]
        else:
            out, lse = merge(torch.stack(outs), torch.stack(lses))
        return out.to(q.dtype), lse.to(_acc_dtype(q.dtype))
