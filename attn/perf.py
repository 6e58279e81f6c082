"""What a timing means: bytes, flops, effective rates, roofline, speedup, and the machine.

Every number here follows SPEC.md "Performance: how it is measured":

- **bytes** (:func:`attn.workloads.ideal_bytes`): the fewest bytes an ideal prefix-aware
  kernel moves: each shared K/V token once, each sequence's own K/V once, q read and out
  written once;
- **flops** (:func:`attn.workloads.flops`): ``4 * B * Hq * D * keys per sequence``;
- **roofline floor**: ``max(bytes / BW, flops / FLOPS)`` with ``BW`` and ``FLOPS`` measured
  in the same process (:func:`attn.timing.ceilings`);
- **fraction of roofline**: floor / time (1.0 would be a perfect kernel);
- **speedup over sdpa**: sdpa's time / this time, both measured in the same run.
"""
from __future__ import annotations

import math
import platform
import re
from typing import Optional

import torch

from .timing import Ceilings
from .workloads import Workload, flops, ideal_bytes

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    for k, v in DTYPES.items():
        if v == dtype:
            return k
    return str(dtype).replace("torch.", "")


def workload_params(w: Workload) -> dict:
    """The workload's defining numbers, for ``extra_info`` and JSON."""
    return {"name": w.name, "id": w.id, "batch": w.batch, "q_heads": w.q_heads, "kv_heads": w.kv_heads,
            "levels": [list(x) for x in w.levels], "prefix_tokens": w.prefix_tokens, "suffix": w.suffix,
            "head_dim": w.head_dim, "ragged": w.ragged}


def roofline_floor_s(nbytes: float, nflops: float, c: Optional[Ceilings]) -> float:
    """``max(bytes / BW, flops / FLOPS)`` in seconds; NaN without ceilings (no GPU)."""
    if c is None:
        return math.nan
    return max(nbytes / c.bandwidth, nflops / c.matmul)


def metrics(w: Workload, dtype: torch.dtype, seconds: float, *, suffix_lens=None,
            ceilings: Optional[Ceilings] = None, sdpa_seconds: Optional[float] = None) -> dict:
    """The derived numbers of one timing.

    Parameters
    ----------
    w, dtype : the workload and input dtype timed.
    seconds : median GPU time per call.
    suffix_lens : int tensor ``[B]`` of the ragged variant (what was actually drawn).
    ceilings : this GPU's measured ceilings, or None.
    sdpa_seconds : the baseline's time on the same workload and dtype, or None.

    Returns
    -------
    dict with ``median_us, bytes, flops, TBps, TFLOPs, floor_us, roofline_fraction,
    speedup_vs_sdpa, sdpa_us`` (NaN-free: absent numbers are None).
    """
    esize = torch.empty((), dtype=dtype).element_size()
    nbytes = ideal_bytes(w, esize, suffix_lens)
    nflops = flops(w, suffix_lens)
    floor = roofline_floor_s(nbytes, nflops, ceilings)
    ok = seconds is not None and seconds > 0 and math.isfinite(seconds)

    def num(x):
        return None if x is None or not math.isfinite(x) else float(x)

    return {
        "median_us": num(seconds * 1e6) if ok else None,
        "bytes": int(nbytes),
        "flops": int(nflops),
        "TBps": num(nbytes / seconds / 1e12) if ok else None,
        "TFLOPs": num(nflops / seconds / 1e12) if ok else None,
        "floor_us": num(floor * 1e6),
        "roofline_fraction": num(floor / seconds) if ok else None,
        "bound": None if ceilings is None else ("memory" if nbytes / ceilings.bandwidth >= nflops / ceilings.matmul else "compute"),
        "sdpa_us": num(sdpa_seconds * 1e6) if sdpa_seconds else None,
        "speedup_vs_sdpa": num(sdpa_seconds / seconds) if ok and sdpa_seconds else None,
    }


def gpu_name(device=None) -> Optional[str]:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def gpu_slug(device=None) -> str:
    """Folder name of this machine's results: the GPU's name (``nvidia-h100-80gb-hbm3``),
    or ``cpu-<arch>`` without one."""
    name = gpu_name(device)
    return slug(name) if name else f"cpu-{slug(platform.machine() or 'unknown')}"


def machine_info(device=None, ceil: Optional[Ceilings] = None) -> dict:
    """GPU name, compute capability and memory, and the torch/triton/CUDA versions."""
    info = {"gpu": None, "gpu_slug": gpu_slug(device), "compute_capability": None, "sm_count": None,
            "gpu_memory_gib": None, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version()}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # triton is a dependency, but a broken install should not stop a report
        info["triton"] = f"not importable: {e}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, compute_capability=f"{p.major}.{p.minor}", sm_count=p.multi_processor_count,
                    gpu_memory_gib=round(p.total_memory / 2**30, 1))
    if ceil is not None:
        info["ceilings"] = ceil.as_dict()
    return info


def fmt(x, spec: str, none: str = "-") -> str:
    """``format(x, spec)``, or ``none`` for a missing number."""
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)
