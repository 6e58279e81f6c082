"""One tk op call per workload, for Nsight Compute: where does the stacked kernel's time go?

    ncu --clock-control none --kernel-name regex:stacked_attn --launch-skip 1 --launch-count 1 \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \\
        python3 bench/tk_ncu.py gqa-8b shared_prefix

(``bash bench/tk_ncu.sh`` runs it for the workloads that miss their targets.) The first call
warms up (build, plan); ``--launch-skip 1`` profiles the second.
"""
from __future__ import annotations

import sys

import torch

from attn.cases import build_inputs, op_callable
from attn.workloads import spec_workload


def main(name: str, op: str) -> None:
    w = spec_workload(name)  # a spec name, or its ragged id (tree-3level-ragged)
    inputs = build_inputs(w, torch.bfloat16, torch.device("cuda"))
    fn = op_callable("tk", inputs, op)
    for _ in range(2):
        fn()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
