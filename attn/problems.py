"""Validated, normalised inputs of the three ops: what every backend receives.

The public functions in :mod:`attn.ops` check their arguments here, before any backend is
chosen or any kernel runs. Errors name the argument, what it got and what was expected.
A backend can rely on everything stated in each problem's docstring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .table import ChunkTable

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _desc(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _tensor(name: str, t, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {layout} ({ndim} dims), got {_desc(t)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {_desc(t)}")
    return t


def _same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}: all inputs must share one dtype")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}: all inputs must be on one device")


def _unit_stride(name: str, t: torch.Tensor) -> None:
    # Kernels vectorise along the head dim; every other stride is passed through.
    if t.numel() and t.stride(-1) != 1:
        raise ValueError(f"{name} must have stride 1 in its last (head) dim, got strides {t.stride()}; call .contiguous()")


def _scale(scale, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a Python float or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def _heads(q_name: str, hq: int, kv_name: str, hkv: int) -> None:
    if hkv < 1 or hq % hkv != 0:
        raise ValueError(
            f"{q_name} has {hq} heads, which is not a multiple of the {hkv} kv heads of {kv_name} "
            "(grouped-query attention needs Hq % Hkv == 0)"
        )


@dataclass(frozen=True, eq=False)
class SharedPrefixProblem:
    """Inputs of ``shared_prefix_attention`` after validation.

    Attributes
    ----------
    q : ``[B, Hq, D]``, stride 1 in ``D``.
    prefix_k, prefix_v : tuple of ``[G_i, P_i, Hkv, D]``, one per level with ``P_i > 0``
        (a single shared tensor becomes one level with ``G = 1``; empty levels are dropped);
        ``G_i`` divides ``B``; sequence ``b`` reads group ``b // (B // G_i)``. Stride 1 in ``D``.
    suffix_k, suffix_v : ``[B, S, Hkv, D]`` or None (then ``S = 0``). Stride 1 in ``D``.
    suffix_lens : int32 ``[B]`` on the device, or None meaning every sequence has ``S``.
    scale : float.
    """

    q: torch.Tensor
    prefix_k: tuple
    prefix_v: tuple
    suffix_k: Optional[torch.Tensor]
    suffix_v: Optional[torch.Tensor]
    suffix_lens: Optional[torch.Tensor]
    scale: float
    op = "shared_prefix_attention"

    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def num_q_heads(self) -> int:
        return self.q.shape[1]

    @property
    def num_kv_heads(self) -> int:
        if self.prefix_k:
            return self.prefix_k[0].shape[2]
        return self.suffix_k.shape[2] if self.suffix_k is not None else self.q.shape[1]

    @property
    def head_dim(self) -> int:
        return self.q.shape[2]

    @property
    def suffix_capacity(self) -> int:
        return self.suffix_k.shape[1] if self.suffix_k is not None else 0

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device


@dataclass(frozen=True, eq=False)
class ChunkProblem:
    """Inputs of ``chunk_attention`` after validation.

    Attributes
    ----------
    q : ``[N, Hq, D]``, stride 1 in ``D``.
    k_chunks, v_chunks : ``[num_chunks, Hkv, C, D]``, stride 1 in ``D``.
    table : :class:`ChunkTable` on ``q``'s device, ``table.num_seqs == N``,
        ``table.num_chunks == num_chunks``, ``table.max_chunk_len <= C``.
    scale : float.
    """

    q: torch.Tensor
    k_chunks: torch.Tensor
    v_chunks: torch.Tensor
    table: ChunkTable
    scale: float
    op = "chunk_attention"

    @property
    def num_q_heads(self) -> int:
        return self.q.shape[1]

    @property
    def num_kv_heads(self) -> int:
        return self.k_chunks.shape[1]

    @property
    def head_dim(self) -> int:
        return self.q.shape[2]

    @property
    def chunk_size(self) -> int:
        return self.k_chunks.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device


@dataclass(frozen=True, eq=False)
class MergeProblem:
    """Inputs of ``merge_states``: ``outs [K, ..., D]``, ``lses`` float32 ``[K, ...]``."""

    outs: torch.Tensor
    lses: torch.Tensor
    op = "merge_states"

    @property
    def head_dim(self) -> int:
        return self.outs.shape[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.outs.dtype

    @property
    def device(self) -> torch.device:
        return self.outs.device


Problem = Union[SharedPrefixProblem, ChunkProblem, MergeProblem]


def _check_lengths_in_range(lens: torch.Tensor, s: int) -> None:
    # Reading the values costs a host sync, which a CUDA graph capture cannot contain:
    # during capture the check is skipped (the values were checked when capture ran eagerly).
    if lens.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if lens.numel() == 0:
        return
    lo, hi = (int(x) for x in torch.aminmax(lens))  # one host sync, not two
    if lo < 0 or hi > s:
        raise ValueError(f"suffix_lens must lie in [0, S={s}], got values in [{lo}, {hi}]")


def _lengths_on(lens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``lens`` as contiguous int32 on ``device``.

    Lengths on the host (checked there without a sync) go to the GPU without one either: a
    blocking copy waits for the stream, and CUDA may do the same for an asynchronous one from
    pageable memory. So they go from a pinned copy of our own, which the caller cannot change
    before the GPU has read it (the caching host allocator keeps it until the copy is done).
    """
    if lens.device.type == "cpu" and device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            # A captured copy would read the pinned block again at every replay, after the
            # allocator has handed it on; the blocking copy before failed inside CUDA instead.
            raise ValueError("suffix_lens on the CPU cannot be captured in a CUDA graph: pass them on the GPU")
        return lens.to(torch.int32, copy=True).pin_memory().to(device, non_blocking=True)
    return lens.to(device=device, dtype=torch.int32).contiguous()


def shared_prefix_problem(q, prefix_k, prefix_v, suffix_k=None, suffix_v=None, suffix_lens=None,
                          scale=None) -> SharedPrefixProblem:
    q = _tensor("q", q, 3, "[B, Hq, D]")
    b, hq, d = q.shape
    if isinstance(prefix_k, torch.Tensor) != isinstance(prefix_v, torch.Tensor):
        raise TypeError("prefix_k and prefix_v must both be tensors or both be lists of levels, "
                        f"got {type(prefix_k).__name__} and {type(prefix_v).__name__}")
    if isinstance(prefix_k, torch.Tensor):
        _tensor("prefix_k", prefix_k, 3, "[P, Hkv, D]")
        _tensor("prefix_v", prefix_v, 3, "[P, Hkv, D]")
        levels_k, levels_v = [prefix_k.unsqueeze(0)], [prefix_v.unsqueeze(0)]
        names = ["prefix_k", "prefix_v"]
        level_names = lambda i: names  # noqa: E731
    elif (isinstance(prefix_k, Sequence) and isinstance(prefix_v, Sequence)
          and not isinstance(prefix_k, (str, bytes)) and not isinstance(prefix_v, (str, bytes))):
        if len(prefix_k) != len(prefix_v):
            raise ValueError(f"prefix_k has {len(prefix_k)} levels but prefix_v has {len(prefix_v)}")
        levels_k, levels_v = list(prefix_k), list(prefix_v)
        level_names = lambda i: [f"prefix_k[{i}]", f"prefix_v[{i}]"]  # noqa: E731
        for i, (lk, lv) in enumerate(zip(levels_k, levels_v)):
            _tensor(f"prefix_k[{i}]", lk, 4, "[G, P, Hkv, D]")
            _tensor(f"prefix_v[{i}]", lv, 4, "[G, P, Hkv, D]")
    elif prefix_k is None and prefix_v is None:
        levels_k, levels_v, level_names = [], [], None
    else:
        raise TypeError(f"prefix_k must be a tensor [P, Hkv, D] or a list of [G, P, Hkv, D] levels, got {type(prefix_k).__name__}")

    hkv = None
    kept_k, kept_v = [], []
    for i, (lk, lv) in enumerate(zip(levels_k, levels_v)):
        nk, nv = level_names(i)
        _same(nk, lk, "q", q)
        _same(nv, lv, "q", q)
        if lk.shape != lv.shape:
            raise ValueError(f"{nk} and {nv} must have one shape, got {tuple(lk.shape)} and {tuple(lv.shape)}")
        g, p, h, dk = lk.shape
        if dk != d:
            raise ValueError(f"{nk} has head dim {dk} but q has {d}")
        if hkv is None:
            _heads("q", hq, nk, h)
            hkv = h
        elif h != hkv:
            raise ValueError(f"{nk} has {h} kv heads but earlier prefix levels have {hkv}")
        if g < 1 or b % g != 0:
            raise ValueError(f"{nk} has {g} groups, which does not divide the batch B={b} of q")
        _unit_stride(nk, lk)
        _unit_stride(nv, lv)
        if p > 0:
            kept_k.append(lk)
            kept_v.append(lv)

    if (suffix_k is None) != (suffix_v is None):
        raise ValueError("suffix_k and suffix_v must both be given or both be None")
    if suffix_k is not None:
        _tensor("suffix_k", suffix_k, 4, "[B, S, Hkv, D]")
        _tensor("suffix_v", suffix_v, 4, "[B, S, Hkv, D]")
        _same("suffix_k", suffix_k, "q", q)
        _same("suffix_v", suffix_v, "q", q)
        if suffix_k.shape != suffix_v.shape:
            raise ValueError(f"suffix_k and suffix_v must have one shape, got {tuple(suffix_k.shape)} and {tuple(suffix_v.shape)}")
        sb, s, h, dk = suffix_k.shape
        if sb != b:
            raise ValueError(f"suffix_k has batch {sb} but q has B={b}")
        if dk != d:
            raise ValueError(f"suffix_k has head dim {dk} but q has {d}")
        if hkv is None:
            _heads("q", hq, "suffix_k", h)
        elif h != hkv:
            raise ValueError(f"suffix_k has {h} kv heads but the prefix has {hkv}")
        _unit_stride("suffix_k", suffix_k)
        _unit_stride("suffix_v", suffix_v)
    else:
        s = 0
    if suffix_lens is not None:
        if suffix_k is None:
            raise ValueError("suffix_lens was given without suffix_k/suffix_v")
        if not isinstance(suffix_lens, torch.Tensor):
            suffix_lens = torch.as_tensor(suffix_lens)
        if suffix_lens.dtype.is_floating_point or suffix_lens.dtype.is_complex or suffix_lens.dtype == torch.bool:
            raise TypeError(f"suffix_lens must be an integer tensor [B], got dtype {suffix_lens.dtype}")
        if suffix_lens.dim() != 1 or suffix_lens.shape[0] != b:
            raise ValueError(f"suffix_lens must be [B={b}], got shape {tuple(suffix_lens.shape)}")
        if suffix_lens.device != q.device:
            if suffix_lens.device.type != "cpu":
                raise ValueError(f"suffix_lens is on {suffix_lens.device} but q is on {q.device}")
        _check_lengths_in_range(suffix_lens, s)
        suffix_lens = _lengths_on(suffix_lens, q.device)
    return SharedPrefixProblem(q, tuple(kept_k), tuple(kept_v), suffix_k, suffix_v, suffix_lens, _scale(scale, d))


def chunk_problem(q, k_chunks, v_chunks, table, scale=None) -> ChunkProblem:
    q = _tensor("q", q, 3, "[N, Hq, D]")
    _tensor("k_chunks", k_chunks, 4, "[num_chunks, Hkv, C, D]")
    _tensor("v_chunks", v_chunks, 4, "[num_chunks, Hkv, C, D]")
    _same("k_chunks", k_chunks, "q", q)
    _same("v_chunks", v_chunks, "q", q)
    if k_chunks.shape != v_chunks.shape:
        raise ValueError(f"k_chunks and v_chunks must have one shape, got {tuple(k_chunks.shape)} and {tuple(v_chunks.shape)}")
    if not isinstance(table, ChunkTable):
        raise TypeError(f"table must be an attn.ChunkTable, got {type(table).__name__}")
    n, hq, d = q.shape
    num_chunks, hkv, c, dk = k_chunks.shape
    if dk != d:
        raise ValueError(f"k_chunks has head dim {dk} but q has {d}")
    _heads("q", hq, "k_chunks", hkv)
    if table.num_seqs != n:
        raise ValueError(f"q has {n} rows but table has {table.num_seqs} sequences: q must have one query per table row")
    if table.num_chunks != num_chunks:
        raise ValueError(f"table.chunk_lens covers {table.num_chunks} chunks but k_chunks holds {num_chunks}")
    if table.max_chunk_len > c:
        raise ValueError(f"table.chunk_lens has a chunk of {table.max_chunk_len} tokens, more than the chunk size C={c} of k_chunks")
    if table.device != q.device:
        raise ValueError(f"table is on {table.device} but q is on {q.device}: use table.to(device)")
    _unit_stride("k_chunks", k_chunks)
    _unit_stride("v_chunks", v_chunks)
    return ChunkProblem(q, k_chunks, v_chunks, table, _scale(scale, d))


def merge_problem(outs, lses) -> MergeProblem:
    if isinstance(outs, (list, tuple)):
        outs = torch.stack(list(outs))
    if isinstance(lses, (list, tuple)):
        lses = torch.stack(list(lses))
    if not isinstance(outs, torch.Tensor) or not isinstance(lses, torch.Tensor):
        raise TypeError("outs and lses must be tensors (or lists of tensors)")
    if outs.dim() < 2:
        raise ValueError(f"outs must be [K, ..., D], got shape {tuple(outs.shape)}")
    if outs.dtype not in FLOAT_DTYPES:
        raise TypeError(f"outs must be a floating tensor, got dtype {outs.dtype}")
    if lses.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"lses must be float32 (or float64), got dtype {lses.dtype}")
    if tuple(lses.shape) != tuple(outs.shape[:-1]):
        raise ValueError(f"lses must be [K, ...] = {tuple(outs.shape[:-1])} to match outs {tuple(outs.shape)}, got {tuple(lses.shape)}")
    if lses.device != outs.device:
        raise ValueError(f"lses is on {lses.device} but outs is on {outs.device}")
    if outs.shape[0] < 1:
        raise ValueError("outs must hold at least one state (K >= 1)")
    return MergeProblem(outs, lses)
