"""What ``bench/``, ``python -m attn compare`` and the timing tests run: one source.

A *case* is (workload, dtype, backend, op). ``op`` is ``"shared_prefix"`` (the level form)
or ``"chunk"`` (the same keys in chunk-pool form, chunk size 64) for the attn backends, and
``"materialized"`` for the ``sdpa`` baseline, which runs PyTorch's
``scaled_dot_product_attention`` on each sequence's materialised (duplicated) K/V — what a
user without prefix-aware kernels runs today.

What is timed is the backend's ``run`` on an already validated problem: validation and
backend selection are host work that every backend shares, and some of it synchronises
with the host (ragged lengths are range-checked), which CUDA graphs cannot capture.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .dispatch import backends
from .problems import chunk_problem, shared_prefix_problem
from .workloads import SPEC_WORKLOADS, ChunkInputs, SharedPrefixInputs, Workload, make_inputs, to_chunk_form

SDPA = "sdpa"
OPS = ("shared_prefix", "chunk")
SDPA_OP = "materialized"
CHUNK_SIZE = 64
#: the materialised K/V of sdpa may use at most this fraction of the free GPU memory
SDPA_MEMORY_FRACTION = 0.8


def spec_variants() -> list[Workload]:
    """The spec's workloads, each also with ragged suffixes (uniform in ``[S/2, S]``)."""
    out = []
    for w in SPEC_WORKLOADS:
        out.append(w)
        if w.suffix > 0:
            out.append(w.with_(ragged=True))
    return out


def small_workloads() -> list[Workload]:
    """Tiny versions of the spec's workloads (same names, sharing structure and GQA ratios),
    for smoke runs and ``compare`` on a machine without a GPU."""
    small = (
        Workload("chunkattn-mha", 4, 4, 4, ((1, 96),), 16, head_dim=64),
        Workload("hydragen-mqa", 8, 8, 1, ((1, 96),), 16, head_dim=64),
        Workload("gqa-8b", 4, 8, 2, ((1, 160),), 16, head_dim=64),
        Workload("tree-3level", 8, 4, 2, ((1, 64), (2, 32), (8, 16)), 8, head_dim=64),
        Workload("no-share", 4, 4, 2, (), 80, head_dim=64),
    )
    out = []
    for w in small:
        out.append(w)
        if w.name in ("gqa-8b", "tree-3level"):
            out.append(w.with_(ragged=True))
    return out


def case_id(w: Workload, backend: str, dtype: str, op: str) -> str:
    """Readable id, e.g. ``gqa-8b[triton-bf16-shared_prefix]``."""
    return f"{w.id}[{backend}-{dtype}-{op}]"


def ops_of(backend: str) -> tuple:
    return (SDPA_OP,) if backend == SDPA else OPS


@dataclass
class Inputs:
    """One workload's tensors in both forms, built once and shared by every backend."""

    workload: Workload
    dtype: torch.dtype
    device: torch.device
    level: SharedPrefixInputs
    _chunk: Optional[ChunkInputs] = None

    @property
    def suffix_lens(self):
        return self.level.suffix_lens

    @property
    def chunk(self) -> ChunkInputs:
        if self._chunk is None:
            self._chunk = to_chunk_form(self.level, CHUNK_SIZE)
        return self._chunk

    def problem(self, op: str):
        if op == "shared_prefix":
            return shared_prefix_problem(*self.level.args(), None)
        if op == "chunk":
            return chunk_problem(*self.chunk.args(), None)
        raise ValueError(f"unknown op {op!r}: one of {OPS}")


def build_inputs(w: Workload, dtype: torch.dtype, device, seed: int = 0) -> Inputs:
    return Inputs(w, dtype, torch.device(device), make_inputs(w, dtype, device, seed))


# ---- sdpa baseline ------------------------------------------------------------------
def sdpa_bytes(w: Workload, dtype: torch.dtype) -> int:
    """GPU memory the materialised K and V of every sequence take."""
    esize = torch.empty((), dtype=dtype).element_size()
    return 2 * w.batch * w.kv_heads * (w.prefix_tokens + w.suffix) * w.head_dim * esize


def sdpa_unfit_reason(w: Workload, dtype: torch.dtype, device) -> Optional[str]:
    """Why sdpa's materialised K/V would not fit in GPU memory (None when it fits)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    need = sdpa_bytes(w, dtype)
    free, _ = torch.cuda.mem_get_info(device)
    if need > SDPA_MEMORY_FRACTION * free:
        return (f"sdpa skipped: materialised per-sequence K/V needs {need / 2**30:.1f} GiB, "
                f"only {free / 2**30:.1f} GiB free on the GPU")
    return None


def materialize(inp: SharedPrefixInputs, w: Workload):
    """Each sequence's K and V side by side, ``[B, Hkv, T, D]`` (prefix duplicated per
    sequence), and the key mask ``[B, 1, 1, T]`` of the ragged variant (else None)."""
    q = inp.q
    b, hq, d = q.shape
    hkv = w.kv_heads
    t = w.prefix_tokens + w.suffix
    k = torch.empty(b, hkv, t, d, dtype=q.dtype, device=q.device)
    v = torch.empty_like(k)
    off = 0
    for lk, lv in zip(inp.prefix_k, inp.prefix_v):
        g, p = lk.shape[:2]
        # broadcasting copy: no duplicated temporary of the level
        k.view(g, b // g, hkv, t, d)[:, :, :, off:off + p].copy_(lk.permute(0, 2, 1, 3)[:, None])
        v.view(g, b // g, hkv, t, d)[:, :, :, off:off + p].copy_(lv.permute(0, 2, 1, 3)[:, None])
        off += p
    if inp.suffix_k is not None:
        k[:, :, off:].copy_(inp.suffix_k.permute(0, 2, 1, 3))
        v[:, :, off:].copy_(inp.suffix_v.permute(0, 2, 1, 3))
    mask = None
    if inp.suffix_lens is not None:
        valid = off + inp.suffix_lens.to(device=q.device, dtype=torch.long)
        mask = (torch.arange(t, device=q.device)[None, :] < valid[:, None]).view(b, 1, 1, t)
    return k, v, mask


def sdpa_callable(inputs: Inputs) -> Callable[[], torch.Tensor]:
    """The baseline on materialised K/V (built here, outside any timed region).

    Grouped-query attention is folded into the query length: the ``Hq / Hkv`` query heads
    that read one kv head become that many queries of one head (exact: decoding has no
    causal mask), so every SDPA kernel (flash, memory-efficient with a mask) can run it
    without repeating K/V.
    """
    w = inputs.workload
    k, v, mask = materialize(inputs.level, w)
    b, hq, d = inputs.level.q.shape
    hkv = w.kv_heads
    q = inputs.level.q.view(b, hkv, hq // hkv, d)
    f = torch.nn.functional.scaled_dot_product_attention

    def run():
        return f(q, k, v, attn_mask=mask).view(b, hq, d)

    return run


# ---- attn backends ------------------------------------------------------------------
def backend_reasons(name: str, inputs: Inputs, op: str) -> list:
    """Why backend ``name`` cannot run ``op`` on these inputs (empty when it can)."""
    if name == SDPA:
        r = sdpa_unfit_reason(inputs.workload, inputs.dtype, inputs.device)
        return [r] if r else []
    all_ = backends()
    if name not in all_:
        return [f"backend {name!r} is not registered"]
    be = all_[name]
    reasons = be.unavailable_reasons()
    if reasons:
        return reasons
    return be.not_supported_reasons(inputs.problem(op))


def op_callable(name: str, inputs: Inputs, op: str) -> Callable[[], object]:
    """A no-argument callable that runs ``op`` of backend ``name`` on ``inputs``.

    Check :func:`backend_reasons` first; this raises for a backend that cannot run.
    """
    if name == SDPA:
        return sdpa_callable(inputs)
    be = backends()[name]
    problem = inputs.problem(op)
    run = be.run

    def call():
        return run(problem)

    return call
