"""One triton op call per workload, for Nsight Compute: where does each phase kernel's time go?

    ncu --clock-control none --kernel-name regex:_segment_kernel --launch-skip 3 --launch-count 3 \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        --section MemoryWorkloadAnalysis --section LaunchStats \\
        python3 bench/triton_ncu.py tree-3level shared_prefix [key=value ...]

``key=value`` pairs are :func:`attn.triton.config.forced` overrides (values read as Python
literals). The first call warms up (compile, plan); skip its launches to profile the second.
Nsight Compute serialises kernels, so each phase is measured alone, not overlapped.
"""
from __future__ import annotations

import ast
import sys

import torch

from attn.cases import build_inputs, op_callable
from attn.triton import config
from attn.workloads import spec_workload


def main(name: str, op: str, *overrides: str) -> None:
    force = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in overrides)}
    w = spec_workload(name)  # a spec name, or its ragged id (tree-3level-ragged)
    inputs = build_inputs(w, torch.bfloat16, torch.device("cuda"))
    fn = op_callable("triton", inputs, op)
    with config.forced(**force):
        for _ in range(2):
            fn()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(*sys.argv[1:])
