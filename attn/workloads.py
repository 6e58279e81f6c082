"""The spec's workloads, their inputs in both forms, and their ideal bytes and flops.

One source of workload definitions for the tests, ``bench/`` and ``python -m attn compare``.
A workload is built in the *level form* of ``shared_prefix_attention`` and converted to the
*chunk-pool form* of ``chunk_attention`` by :func:`to_chunk_form`, so both ops run on the
same keys and values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .table import ChunkTable


@dataclass(frozen=True)
class Workload:
    """A decode-attention workload.

    ``levels`` lists ``(groups, tokens)`` of each prefix level, outermost first: ``(1, P)``
    is a prefix shared by the whole batch. ``suffix`` is each sequence's own length ``S``;
    ``ragged`` draws suffix lengths uniformly in ``[S/2, S]``.
    """

    name: str
    batch: int
    q_heads: int
    kv_heads: int
    levels: tuple
    suffix: int
    head_dim: int = 128
    ragged: bool = False
    mirrors: str = ""

    @property
    def prefix_tokens(self) -> int:
        return sum(p for _, p in self.levels)

    def with_(self, **kw) -> "Workload":
        d = {**self.__dict__, **kw}
        return Workload(**d)

    @property
    def id(self) -> str:
        return self.name + ("-ragged" if self.ragged else "")


#: The workloads of SPEC.md (bf16, D = 128).
SPEC_WORKLOADS = (
    Workload("chunkattn-mha", 32, 32, 32, ((1, 2048),), 256, mirrors="ChunkAttention paper (Llama-7B heads)"),
    Workload("hydragen-mqa", 1024, 8, 1, ((1, 2048),), 256, mirrors="Hydragen microbenchmark (CodeLlama-34B, TP 8)"),
    Workload("gqa-8b", 256, 32, 8, ((1, 8192),), 256, mirrors="Llama-3-8B, long shared prompt"),
    Workload("gqa-8b-long", 64, 32, 8, ((1, 32768),), 256, mirrors="FlashInfer cascade blog regime"),
    Workload("tree-3level", 128, 32, 8, ((1, 2048), (8, 512), (32, 128)), 64, mirrors="hierarchical sharing"),
    Workload("no-share", 64, 32, 8, (), 2048, mirrors="control: nothing shared"),
)


def spec_workload(name: str) -> Workload:
    """The spec workload named ``name``, or its ragged variant by id (``gqa-8b-ragged``)."""
    for w in SPEC_WORKLOADS:
        if w.name == name:
            return w
        if name == w.with_(ragged=True).id:
            return w.with_(ragged=True)
    raise ValueError(f"unknown workload {name!r}: one of {[w.name for w in SPEC_WORKLOADS]}")


@dataclass
class SharedPrefixInputs:
    """Arguments of ``shared_prefix_attention`` for a workload (level form)."""

    q: torch.Tensor
    prefix_k: list
    prefix_v: list
    suffix_k: Optional[torch.Tensor]
    suffix_v: Optional[torch.Tensor]
    suffix_lens: Optional[torch.Tensor]

    def args(self) -> tuple:
        return (self.q, self.prefix_k, self.prefix_v, self.suffix_k, self.suffix_v, self.suffix_lens)


@dataclass
class ChunkInputs:
    """Arguments of ``chunk_attention`` for a workload (chunk-pool form)."""

    q: torch.Tensor
    k_chunks: torch.Tensor
    v_chunks: torch.Tensor
    table: ChunkTable

    def args(self) -> tuple:
        return (self.q, self.k_chunks, self.v_chunks, self.table)


def make_inputs(w: Workload, dtype=torch.bfloat16, device="cpu", seed: int = 0) -> SharedPrefixInputs:
    """Random inputs of ``w`` in the level form (standard normal q, k, v)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype=dtype, device=device)  # noqa: E731
    b, hq, hkv, d = w.batch, w.q_heads, w.kv_heads, w.head_dim
    q = rnd(b, hq, d)
    pk = [rnd(gr, p, hkv, d) for gr, p in w.levels]
    pv = [rnd(gr, p, hkv, d) for gr, p in w.levels]
    sk = sv = lens = None
    if w.suffix > 0:
        sk, sv = rnd(b, w.suffix, hkv, d), rnd(b, w.suffix, hkv, d)
        if w.ragged:
            lo = w.suffix // 2
            lens = torch.randint(lo, w.suffix + 1, (b,), generator=g, dtype=torch.int32).to(device)
    return SharedPrefixInputs(q, pk, pv, sk, sv, lens)


def to_chunk_form(inp: SharedPrefixInputs, chunk_size: int = 64, *, shuffle: bool = False,
                  seed: int = 0) -> ChunkInputs:
    """The chunk-pool form of a level-form problem: the same keys, cut into chunks.

    Each group of each prefix level is cut into ``ceil(P_i / C)`` chunks (the last one
    partial when ``C`` does not divide ``P_i``), stored once and read by every sequence of
    the group; each sequence's suffix becomes its private chunks. ``shuffle`` permutes the
    chunk ids in the pool, so that kernels cannot rely on chunks being in order.
    """
    q = inp.q
    b, hq, d = q.shape
    dev, dtype = q.device, q.dtype
    c = chunk_size
    pieces_k, pieces_v, lens = [], [], []

    def add(k: torch.Tensor, v: torch.Tensor) -> list:
        """Cut ``[T, Hkv, D]`` into chunks; return their ids."""
        ids = []
        for start in range(0, k.shape[0], c):
            part_k, part_v = k[start:start + c], v[start:start + c]
            t = part_k.shape[0]
            pk = torch.zeros(c, *part_k.shape[1:], dtype=dtype, device=dev)
            pv = torch.zeros_like(pk)
            pk[:t], pv[:t] = part_k, part_v
            pieces_k.append(pk.transpose(0, 1))
            pieces_v.append(pv.transpose(0, 1))
            lens.append(t)
            ids.append(len(lens) - 1)
        return ids

    paths = [[] for _ in range(b)]
    for lk, lv in zip(inp.prefix_k, inp.prefix_v):
        groups = lk.shape[0]
        for gi in range(groups):
            ids = add(lk[gi], lv[gi])
            per = b // groups
            for row in range(gi * per, (gi + 1) * per):
                paths[row].extend(ids)
    if inp.suffix_k is not None:
        sl = inp.suffix_lens.tolist() if inp.suffix_lens is not None else [inp.suffix_k.shape[1]] * b
        for row in range(b):
            paths[row].extend(add(inp.suffix_k[row, : sl[row]], inp.suffix_v[row, : sl[row]]))
    hkv = inp.prefix_k[0].shape[2] if inp.prefix_k else (inp.suffix_k.shape[2] if inp.suffix_k is not None else hq)
    num = len(lens)
    k_chunks = torch.stack(pieces_k) if num else torch.zeros(0, hkv, c, d, dtype=dtype, device=dev)
    v_chunks = torch.stack(pieces_v) if num else torch.zeros(0, hkv, c, d, dtype=dtype, device=dev)
    lens_t = torch.tensor(lens, dtype=torch.int64)
    if shuffle and num:
        perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed))  # new id -> old id
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(num)
        k_chunks, v_chunks, lens_t = k_chunks[perm.to(dev)], v_chunks[perm.to(dev)], lens_t[perm]
        paths = [[int(inv[i]) for i in p] for p in paths]
    width = max([len(p) for p in paths] + [0])
    seq_chunks = torch.full((b, width), -1, dtype=torch.int64)
    for row, p in enumerate(paths):
        seq_chunks[row, : len(p)] = torch.tensor(p, dtype=torch.int64)
    table = ChunkTable.from_seq_chunks(seq_chunks, lens_t, device=dev)
    return ChunkInputs(q, k_chunks.contiguous(), v_chunks.contiguous(), table)


def ideal_bytes(w: Workload, dtype_bytes: int = 2, suffix_lens: Optional[torch.Tensor] = None) -> int:
    """Fewest bytes an ideal prefix-aware kernel moves: every shared K/V token once, every
    sequence's own K/V once, q read and out written once (SPEC.md)."""
    kv_token = 2 * w.kv_heads * w.head_dim * dtype_bytes
    prefix = sum(g * p for g, p in w.levels)
    own = int(suffix_lens.sum()) if suffix_lens is not None else w.batch * w.suffix
    qo = 2 * w.batch * w.q_heads * w.head_dim * dtype_bytes
    return kv_token * (prefix + own) + qo


def naive_bytes(w: Workload, dtype_bytes: int = 2, suffix_lens: Optional[torch.Tensor] = None) -> int:
    """Bytes of per-sequence decode attention that re-reads the prefix for every sequence."""
    kv_token = 2 * w.kv_heads * w.head_dim * dtype_bytes
    own = int(suffix_lens.sum()) if suffix_lens is not None else w.batch * w.suffix
    qo = 2 * w.batch * w.q_heads * w.head_dim * dtype_bytes
    return kv_token * (w.batch * w.prefix_tokens + own) + qo


def flops(w: Workload, suffix_lens: Optional[torch.Tensor] = None) -> int:
    """``4 * B * Hq * D * (keys per sequence)``, summed over sequences (SPEC.md)."""
    own = int(suffix_lens.sum()) if suffix_lens is not None else w.batch * w.suffix
    keys = w.batch * w.prefix_tokens + own
    return 4 * w.q_heads * w.head_dim * keys
