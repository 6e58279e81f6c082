"""Would a tk prefix kernel gain from sharing its SMs with a decode kernel? (GPU experiment)

`triton` overlaps an op's prefix phase (tensor cores) and its suffix phase (HBM) by running
them as concurrent launches whose CTAs sit on the same SM; a default `tk` CTA holds a whole
SM (384 threads x 168 registers), so nothing can sit beside it. This times, per single-level
spec workload (bf16, CUDA-graph replay, L2 flushed), with the tk build of this process
(``ATTN_TK_NVCC_FLAGS``; a lean build is ``-DATTN_TK_MAXNREG=128`` with smaller ring):

- ``tk`` and ``triton``: the whole op, as the backends run it;
- ``tk-prefix``: the tk kernel on the prefix alone (its own splits and merge);
- ``triton-suffix``: triton's overlapped suffix launch alone (its partial states);
- ``hybrid``: ``tk-prefix`` and ``triton-suffix`` on two streams (:func:`attn.streams.concurrently`),
  then triton's merge; ``hybrid-serial``: the same in order. (The tk prefix's result is
  copied into the merge's first slot, ~2 MB at gqa-8b: about a microsecond of the hybrid.)

If ``hybrid`` is well under ``tk-prefix + triton-suffix`` the two kernels' CTAs co-reside,
and its time against ``triton`` says what a tk decode kernel that fits beside the prefix
kernel could reach. The hybrid is an experiment, not a backend: its suffix is Triton's.

    PYTHONPATH=. python bench/tk_coresident.py [--out FILE] [--workloads NAME ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys

import torch

from attn.problems import shared_prefix_problem
from attn.streams import concurrently
from attn.timing import time_op
from attn.workloads import make_inputs, spec_workload

WORKLOADS = ("gqa-8b", "gqa-8b-long", "hydragen-mqa", "chunkattn-mha")


def kernel_resources(jit_fn) -> list:
    """Registers and shared memory of each compiled variant of a Triton kernel (best effort:
    the cache's layout differs between Triton versions)."""
    found = []
    caches = getattr(jit_fn, "device_caches", None) or {}
    for entry in caches.values():
        cache = entry[0] if isinstance(entry, tuple) else entry
        for k in getattr(cache, "values", lambda: [])():
            md = getattr(k, "metadata", None)
            found.append({"n_regs": getattr(k, "n_regs", None), "n_spills": getattr(k, "n_spills", None),
                          "shared": getattr(md, "shared", None), "num_warps": getattr(md, "num_warps", None)})
    return found


def run(name: str, only=None) -> dict:
    from attn.tk_ext.backend import TKBackend
    from attn.triton import config
    from attn.triton import shared_prefix as tsp
    from attn.triton.merge import launch_merge
    from attn.triton.segment import _segment_kernel, launch_segment

    w = spec_workload(name)
    dev = torch.device("cuda")
    inp = make_inputs(w, device=dev)
    q = inp.q
    b, hq, d = q.shape
    p_full = shared_prefix_problem(*inp.args())
    p_pre = shared_prefix_problem(q, inp.prefix_k, inp.prefix_v)
    tk = TKBackend()
    steps = tsp.plan(p_full)
    suffix_steps = [s for s in steps if s[0] == "suffix"]
    if len(steps) != 2 or len(suffix_steps) != 1:
        raise SystemExit(f"{name}: expected one prefix and one suffix launch, got {[s[0] for s in steps]}")
    _, _, splits, split_len, tiles = suffix_steps[0]
    total = 1 + splits
    parts_o = torch.empty(total, b, hq, d, dtype=config.partial_dtype(q.dtype), device=dev)
    parts_lse = torch.empty(total, b, hq, dtype=torch.float32, device=dev)
    out = torch.empty(b, hq, d, dtype=q.dtype, device=dev)
    lse = torch.empty(b, hq, dtype=torch.float32, device=dev)

    def tk_prefix_into_slot0():
        o, l = tk.run_shared_prefix(p_pre)
        parts_o[0].copy_(o)
        parts_lse[0].copy_(l)

    def triton_suffix(t=tiles):
        launch_segment(q, inp.suffix_k, inp.suffix_v, inp.suffix_lens, parts_o, parts_lse, 1, splits, split_len,
                       p_full.scale, t, kind="suffix", overlap=True, suffix_critical=True)

    def merge():
        launch_merge(parts_o.view(total, b * hq, d), parts_lse.view(total, b * hq), out.view(b * hq, d),
                     lse.view(b * hq))

    def hybrid(t=tiles):
        concurrently([tk_prefix_into_slot0, functools.partial(triton_suffix, t)], dev)
        merge()

    def hybrid_serial():
        tk_prefix_into_slot0()
        triton_suffix()
        merge()

    fns = {
        "tk": lambda: tk.run_shared_prefix(p_full),
        "triton": lambda: tsp.run_shared_prefix(p_full),
        "tk-prefix": lambda: tk.run_shared_prefix(p_pre),
        "triton-suffix": triton_suffix,
        "hybrid": hybrid,
        "hybrid-serial": hybrid_serial,
    }
    # Triton's suffix CTA capped at 128 registers (a lean tk CTA leaves 16 K of the 64 K), and
    # with 64-key blocks as well (half the shared memory per stage).
    for label, t in (("r128", dataclasses.replace(tiles, max_regs=128)),
                     ("n64r128", dataclasses.replace(tiles, max_regs=128, block_n=64))):
        fns["triton-suffix-" + label] = functools.partial(triton_suffix, t)
        fns["hybrid-" + label] = functools.partial(hybrid, t)
    ref_o, ref_l = tk.run_shared_prefix(p_full)
    hybrid()
    torch.cuda.synchronize()
    row = {"workload": name, "suffix_splits": splits, "suffix_tiles": str(tiles),
           "hybrid_max_abs_diff": float((out.float() - ref_o.float()).abs().max()),
           "hybrid_lse_max_abs_diff": float((lse - ref_l).abs().max())}
    for key, fn in fns.items():
        if only and key not in only:
            continue
        row[key + "_us"] = time_op(fn, dev, rounds=15).median_s * 1e6
    row["triton_segment_kernels"] = kernel_resources(_segment_kernel)
    if "hybrid_us" in row and "hybrid-serial_us" in row:
        row["overlap_saved_us"] = row["hybrid-serial_us"] - row["hybrid_us"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="JSON lines file to append to")
    ap.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    ap.add_argument("--fns", nargs="*", default=None, help="time only these (tk, tk-prefix, hybrid, ...)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to time", file=sys.stderr)
        return 1
    flags = os.environ.get("ATTN_TK_NVCC_FLAGS", "")
    for name in args.workloads:
        row = {"tk_flags": flags, "gpu": torch.cuda.get_device_name(), **run(name, args.fns), "sched": os.environ.get("ATTN_TK_SCHED", "")}
        times = "  ".join(f"{k[:-3]} {v:.1f}" for k, v in row.items() if k.endswith("_us"))
        print(f"{name} [{flags or 'default'}{' sched=' + row['sched'] if row['sched'] else ''}]: {times}  (hybrid vs tk: max|do| {row['hybrid_max_abs_diff']:.2e})")
        print(f"    triton segment kernels: {row['triton_segment_kernels']}")
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
