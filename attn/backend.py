"""The contract every backend implements, in the style of xformers' operator classes.

A backend declares whether it can run on this machine (:meth:`Backend.unavailable_reasons`)
and which inputs it supports (:meth:`Backend.not_supported_reasons`); both return readable
reasons, empty when all is well. Validated inputs reach it as the problem classes of
:mod:`attn.problems`.
"""
from __future__ import annotations

from typing import ClassVar, Optional

import torch

from .problems import ChunkProblem, MergeProblem, Problem, SharedPrefixProblem


class Backend:
    """Base class of the ``tk``, ``triton`` and ``torch`` backends.

    Subclasses set the class attributes and implement the three ``run_*`` methods, each
    returning ``(out, lse)``: ``out`` in the dtype of the input queries/outs, ``lse``
    float32 (natural log; ``-inf`` where no key was attended).
    """

    name: ClassVar[str] = ""
    #: dtypes the backend computes in; None means any floating dtype.
    dtypes: ClassVar[Optional[frozenset]] = None
    #: head dims the backend computes; None means any.
    head_dims: ClassVar[Optional[frozenset]] = None
    #: device types ("cuda", "cpu") the backend runs on.
    device_types: ClassVar[frozenset] = frozenset({"cuda"})
    #: largest Hq / Hkv; None means any.
    max_gqa_ratio: ClassVar[Optional[int]] = None
    #: smallest and largest chunk size of ``chunk_attention``; None means any.
    chunk_sizes: ClassVar[Optional[tuple]] = None

    # ---- availability -------------------------------------------------------------
    def unavailable_reasons(self) -> list[str]:
        """Why this backend cannot run at all on this machine; empty if it can."""
        return []

    def is_available(self) -> bool:
        return not self.unavailable_reasons()

    def versions(self) -> dict:
        """Versions of what the backend is built on, for ``python -m attn info``."""
        return {}

    # ---- support ------------------------------------------------------------------
    def not_supported_reasons(self, problem: Problem) -> list[str]:
        """Why this backend cannot run ``problem``; empty if it can."""
        reasons = list(self.unavailable_reasons())
        if problem.device.type not in self.device_types:
            reasons.append(f"device type {problem.device.type!r} not supported (supports {sorted(self.device_types)})")
        if self.dtypes is not None and problem.dtype not in self.dtypes:
            names = sorted(str(d).replace("torch.", "") for d in self.dtypes)
            reasons.append(f"dtype {str(problem.dtype).replace('torch.', '')} not supported (supports {', '.join(names)})")
        if self.head_dims is not None and problem.head_dim not in self.head_dims:
            reasons.append(f"head dim {problem.head_dim} not supported (supports {sorted(self.head_dims)})")
        if isinstance(problem, (SharedPrefixProblem, ChunkProblem)):
            ratio = problem.num_q_heads // problem.num_kv_heads
            if self.max_gqa_ratio is not None and ratio > self.max_gqa_ratio:
                reasons.append(f"Hq/Hkv = {ratio} not supported (at most {self.max_gqa_ratio})")
        if isinstance(problem, ChunkProblem) and self.chunk_sizes is not None:
            lo, hi = self.chunk_sizes
            if not lo <= problem.chunk_size <= hi:
                reasons.append(f"chunk size {problem.chunk_size} not supported (supports {lo}..{hi})")
        return reasons

    # ---- ops ----------------------------------------------------------------------
    def run(self, problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(problem, SharedPrefixProblem):
            return self.run_shared_prefix(problem)
        if isinstance(problem, ChunkProblem):
            return self.run_chunk(problem)
        return self.run_merge(problem)

    def run_shared_prefix(self, p: SharedPrefixProblem) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def run_chunk(self, p: ChunkProblem) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def run_merge(self, p: MergeProblem) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<attn backend {self.name}>"
