"""``python -m attn info``: what is installed, which backends run, and why the others don't."""
from __future__ import annotations

import os
import platform
import sys

import torch


def gpu_lines() -> list[str]:
    if not torch.cuda.is_available():
        return ["GPU: none (torch.cuda.is_available() is False)"]
    lines = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        lines.append(f"GPU {i}: {p.name}, compute capability {p.major}.{p.minor}, "
                     f"{p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
    return lines


def report() -> str:
    from . import __version__
    from .dispatch import backends, requested_backend

    lines = [f"attn {__version__}", f"python {platform.python_version()} ({sys.executable})",
             f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})"]
    try:
        import triton

        lines.append(f"triton {triton.__version__}" + (" (TRITON_INTERPRET=1)" if os.environ.get("TRITON_INTERPRET") == "1" else ""))
    except Exception as e:  # pragma: no cover - triton is a dependency
        lines.append(f"triton: not importable ({e})")
    lines += gpu_lines()
    name, source = requested_backend()
    lines.append(f"selection: {name} (from {source})")
    lines.append("backends (auto order):")
    for bname, b in backends().items():
        reasons = b.unavailable_reasons()
        status = "available" if not reasons else "unavailable"
        vers = ", ".join(f"{k} {v}" for k, v in b.versions().items())
        lines.append(f"  {bname:7s} {status}" + (f"  [{vers}]" if vers else ""))
        lines += [f"          - {r}" for r in reasons]
    return "\n".join(lines)
