"""The ``triton`` backend: Hydragen and ChunkAttention kernels written in Triton.

Available on a CUDA device, or on the CPU through Triton's interpreter when
``TRITON_INTERPRET=1`` is set before Triton is imported. Kernels are imported on first use,
so importing :mod:`attn` neither imports Triton nor compiles anything.
"""
from __future__ import annotations

import importlib.util

import torch

from ..backend import Backend
from ..problems import ChunkProblem, MergeProblem, SharedPrefixProblem
from . import config


class TritonBackend(Backend):
    name = "triton"
    dtypes = frozenset({torch.float16, torch.bfloat16, torch.float32})
    #: tiles hold a whole head row (``tl.arange`` needs a power of two; these are tuned)
    head_dims = frozenset({64, 128})
    max_gqa_ratio = 16
    chunk_sizes = (16, 128)

    @property
    def device_types(self) -> frozenset:  # type: ignore[override]
        # The interpreter runs kernels on the CPU; compiled kernels only on CUDA.
        return frozenset({"cuda", "cpu"}) if config.interpreting() else frozenset({"cuda"})

    def unavailable_reasons(self) -> list[str]:
        if importlib.util.find_spec("triton") is None:
            return ["the triton package is not installed (pip install triton)"]
        if config.interpreting() or torch.cuda.is_available():
            return []
        return ["no CUDA device, and TRITON_INTERPRET=1 is not set (set it before importing triton "
                "to run the kernels on the CPU in Triton's interpreter)"]

    def versions(self) -> dict:
        try:
            import triton
        except ImportError:
            return {}
        return {"triton": triton.__version__, "interpreter": config.interpreting()}

    def not_supported_reasons(self, problem) -> list[str]:
        reasons = super().not_supported_reasons(problem)
        if isinstance(problem, MergeProblem):
            # The merge kernel masks the head dim, so it takes any D; the limit is the attention tiles'.
            reasons = [r for r in reasons if not r.startswith("head dim ")]
        if (problem.device.type == "cpu" and problem.dtype == torch.bfloat16 and config.interpreting()
                and "cpu" in self.device_types):
            reasons.append("bfloat16 on the CPU: the Triton interpreter has no bfloat16 math")
        return reasons

    def run_shared_prefix(self, p: SharedPrefixProblem):
        from .shared_prefix import run_shared_prefix
        return run_shared_prefix(p)

    def run_chunk(self, p: ChunkProblem):
        from .chunk import run_chunk
        return run_chunk(p)

    def run_merge(self, p: MergeProblem):
        from .merge import merge_states
        return merge_states(p.outs, p.lses)
