"""Deterministic test cases: both ops' inputs, small enough for the Triton interpreter.

A case builds its inputs for a dtype and device; ``Case.problem`` validates them through
the public path so every backend sees exactly what users' calls produce.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch

from attn import PrefixKVCache
from attn.problems import chunk_problem, shared_prefix_problem
from attn.workloads import ChunkInputs, Workload, make_inputs, to_chunk_form


@dataclass
class Case:
    id: str
    op: str  # "shared_prefix" or "chunk"
    build: Callable  # (dtype, device) -> inputs with .args()
    gpu_only: bool = False

    def inputs(self, dtype, device):
        return self.build(dtype, device)

    def problem(self, inp):
        if self.op == "shared_prefix":
            return shared_prefix_problem(*inp.args())
        return chunk_problem(*inp.args())


def poison_past_lengths(inp, value: float) -> int:
    """Write ``value`` (NaN, inf) into every key and value past its sequence's or chunk's length
    (suffix rows past ``suffix_lens``, chunk rows past ``chunk_lens``), in place; returns how
    many rows were poisoned. No backend may let them reach the output: KV caches hold stale or
    uninitialised memory there."""
    n = 0
    if isinstance(inp, ChunkInputs):
        for c, length in enumerate(inp.table.chunk_lens.tolist()):
            inp.k_chunks[c, :, length:] = value
            inp.v_chunks[c, :, length:] = value
            n += inp.k_chunks.shape[2] - length
    elif inp.suffix_k is not None and inp.suffix_lens is not None:
        for b, length in enumerate(inp.suffix_lens.tolist()):
            inp.suffix_k[b, length:] = value
            inp.suffix_v[b, length:] = value
            n += inp.suffix_k.shape[1] - length
    return n


def _level(w: Workload, seed: int):
    return lambda dtype, device: make_inputs(w, dtype, device, seed=seed)


def _chunked(w: Workload, c: int, seed: int):
    return lambda dtype, device: to_chunk_form(make_inputs(w, dtype, device, seed=seed), c, shuffle=True, seed=seed)


def cache_tree_inputs(dtype, device, *, seed=0, hkv=2, hq=8, d=64, c=16, max_chunks=64) -> ChunkInputs:
    """A prefix tree grown by PrefixKVCache: shared prompt, forks, appends, removals."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g).to(dtype=dtype, device=device)  # noqa: E731
    cache = PrefixKVCache(hkv, d, chunk_size=c, max_chunks=max_chunks, dtype=dtype, device=device)
    prompt = [rng.randrange(50) for _ in range(2 * c + 5)]
    a = cache.add_sequence(prompt, rnd(len(prompt), hkv, d), rnd(len(prompt), hkv, d))
    kids = cache.fork(a, 3)
    other = [rng.randrange(50) for _ in range(c - 3)]
    cache.add_sequence(other, rnd(len(other), hkv, d), rnd(len(other), hkv, d))
    longer = prompt[: 2 * c] + [rng.randrange(50) for _ in range(c + 1)]
    cache.add_sequence(longer, rnd(len(longer), hkv, d), rnd(len(longer), hkv, d))
    for _ in range(c - 4):
        ids = [a] + kids
        cache.append(ids, [rng.randrange(50) for _ in ids], rnd(len(ids), hkv, d), rnd(len(ids), hkv, d))
    cache.remove_sequence(kids[1])
    table = cache.table()
    n = len(table.seq_ids)
    return ChunkInputs(rnd(n, hq, d), cache.k_chunks, cache.v_chunks, table)


def _cache(seed: int, **kw):
    return lambda dtype, device: cache_tree_inputs(dtype, device, seed=seed, **kw)


W = Workload
CASES = [
    Case("prefix65-gqa4-d64-ragged", "shared_prefix", _level(W("", 4, 8, 2, ((1, 65),), 63, 64, ragged=True), 1)),
    Case("3level-mha-d128", "shared_prefix", _level(W("", 4, 2, 2, ((1, 33), (2, 16), (4, 5)), 17, 128), 2)),
    Case("noprefix-gqa8", "shared_prefix", _level(W("", 3, 8, 1, (), 63, 64, ragged=True), 3)),
    Case("nosuffix-p257", "shared_prefix", _level(W("", 2, 4, 4, ((1, 257),), 0, 64), 4)),
    Case("b1-p1-s1", "shared_prefix", _level(W("", 1, 4, 1, ((1, 1),), 1, 128), 5)),
    Case("2level-gqa4-d128", "shared_prefix", _level(W("", 8, 8, 2, ((1, 64), (4, 63)), 65, 128, ragged=True), 6)),
    Case("chunk16-3level-gqa4", "chunk", _chunked(W("", 4, 8, 2, ((1, 40), (2, 17)), 9, 64, ragged=True), 16, 7)),
    Case("chunk32-mha-d128", "chunk", _chunked(W("", 3, 2, 2, ((1, 65),), 33, 128), 32, 8)),
    Case("chunk64-gqa8", "chunk", _chunked(W("", 4, 8, 1, ((1, 130), (2, 64)), 63, 64, ragged=True), 64, 9)),
    Case("chunk16-b1", "chunk", _chunked(W("", 1, 4, 4, ((1, 7),), 1, 64), 16, 10)),
    Case("chunk-cache-tree", "chunk", _cache(11)),
    Case("chunk-cache-tree-gqa1-d128", "chunk", _cache(12, hkv=2, hq=2, d=128, c=32)),
    # Benchmark-sized shapes: too slow for the CPU and the Triton interpreter.
    Case("gpu-gqa8b-p8192", "shared_prefix", _level(W("", 16, 32, 8, ((1, 8192),), 256, 128, ragged=True), 20), True),
    Case("gpu-tree3-p2048", "shared_prefix", _level(W("", 128, 32, 8, ((1, 2048), (8, 512), (32, 128)), 64, 128), 21), True),
    Case("gpu-mqa-b1024", "shared_prefix", _level(W("", 1024, 8, 1, ((1, 2048),), 256, 128), 22), True),
    Case("gpu-chunk64-tree3", "chunk", _chunked(W("", 64, 32, 8, ((1, 2048), (8, 512), (16, 128)), 64, 128, ragged=True), 64, 23), True),
    Case("gpu-chunk64-mha", "chunk", _chunked(W("", 32, 32, 32, ((1, 2048),), 256, 128), 64, 24), True),
]
