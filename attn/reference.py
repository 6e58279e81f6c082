"""Naive attention on materialised per-sequence K/V: the test oracle.

Independent of every backend (including ``torch``): it concatenates each sequence's keys
and values explicitly and takes one softmax per query. In float64 it is the spec's
``ref64``; with ``lowp=True`` it is the spec's ``torch_lowp`` (inputs and softmax
probabilities rounded to the input dtype, accumulation in float32), the yardstick of the
numerical criterion.
"""
from __future__ import annotations

import torch

from .problems import ChunkProblem, SharedPrefixProblem


def sequence_kv(problem) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each sequence's keys and values ``([T_b, Hkv, D], [T_b, Hkv, D])``, materialised."""
    if isinstance(problem, SharedPrefixProblem):
        b = problem.batch
        lens = problem.suffix_lens.tolist() if problem.suffix_lens is not None else [problem.suffix_capacity] * b
        out = []
        for i in range(b):
            ks = [lk[i // (b // lk.shape[0])] for lk in problem.prefix_k]
            vs = [lv[i // (b // lv.shape[0])] for lv in problem.prefix_v]
            if problem.suffix_k is not None:
                ks.append(problem.suffix_k[i, : lens[i]])
                vs.append(problem.suffix_v[i, : lens[i]])
            h, d = problem.num_kv_heads, problem.head_dim
            empty = problem.q.new_zeros((0, h, d))
            out.append((torch.cat(ks) if ks else empty, torch.cat(vs) if vs else empty))
        return out
    if isinstance(problem, ChunkProblem):
        t = problem.table.host
        out = []
        for row in t["seq_chunks"]:
            ids = [c for c in row.tolist() if c >= 0]
            ks = [problem.k_chunks[c, :, : t["chunk_lens"][c]].transpose(0, 1) for c in ids]
            vs = [problem.v_chunks[c, :, : t["chunk_lens"][c]].transpose(0, 1) for c in ids]
            empty = problem.q.new_zeros((0, problem.num_kv_heads, problem.head_dim))
            out.append((torch.cat(ks) if ks else empty, torch.cat(vs) if vs else empty))
        return out
    raise TypeError(f"expected a SharedPrefixProblem or ChunkProblem, got {type(problem).__name__}")


def naive_attention(q: torch.Tensor, kv: list, scale: float, *, lowp: bool = False):
    """Attention of ``q [B, Hq, D]``, row ``b`` over ``kv[b] = (k [T, Hkv, D], v [T, Hkv, D])``.

    Parameters
    ----------
    lowp : bool
        False: everything in float64. True: the ``torch_lowp`` of the spec: inputs kept in
        their dtype, scores and softmax in float32, probabilities rounded to the input
        dtype before ``P @ V`` (accumulated in float32).

    Returns
    -------
    out : ``[B, Hq, D]`` (float64, or q's dtype with ``lowp``); lse : ``[B, Hq]`` (float64,
    or float32 with ``lowp``). A row with no keys gets ``out = 0``, ``lse = -inf``.
    """
    b, hq, d = q.shape
    acc = torch.float32 if lowp else torch.float64
    out = torch.zeros(b, hq, d, dtype=acc, device=q.device)
    lse = torch.full((b, hq), float("-inf"), dtype=acc, device=q.device)
    for i, (k, v) in enumerate(kv):
        if k.shape[0] == 0:
            continue
        r = hq // k.shape[1]
        kk = k.repeat_interleave(r, dim=1).to(acc)  # [T, Hq, D]
        vv = v.repeat_interleave(r, dim=1)
        s = torch.einsum("hd,thd->ht", q[i].to(acc), kk) * scale
        lse[i] = torch.logsumexp(s, dim=-1)
        p = torch.softmax(s, dim=-1)
        if lowp:
            p = p.to(q.dtype).to(acc)
        out[i] = torch.einsum("ht,thd->hd", p, vv.to(acc))
    if lowp:
        return out.to(q.dtype), lse
    return out, lse


def reference(problem, *, lowp: bool = False):
    """``naive_attention`` of a validated problem; see :func:`naive_attention`."""
    return naive_attention(problem.q, sequence_kv(problem), problem.scale, lowp=lowp)
