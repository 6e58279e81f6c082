"""Where a hung tk launch stands: every warp's last wait, read from the host while it runs.

Builds the extension with ``-DATTN_TK_TRACE`` (``ATTN_TK_NVCC_FLAGS``, its own cache entry):
lane 0 of every warp then stores the wait it is about to enter into a device buffer
(``stacked_debug.cuh`` ``trace``), which is copied on a second stream while the launch (on a first
one, neither synchronising with the default stream) still runs; ``--no-trace`` runs the
plain build (hang or not, no positions). Each case runs in its own process; one that has not
finished after ``--timeout`` seconds prints, per unfinished CTA, its items and where its
producer, query warp and consumer warps wait, then exits (the hung context dies with the
process). A case that finishes is compared with the triton backend (max |difference| of out
and lse). The traced mode with a device buffer has not run on a GPU yet (notes/tk.md).

    PYTHONPATH=. python bench/tk_trace.py CASE ... [--timeout S] [--schedules S ...] [--no-trace]

CASE: a spec workload name (``chunkattn-mha``, ``tree-3level-ragged``, ...) or ``B,Hq,Hkv,P,S``
(one shared prefix of P tokens and suffixes of S); ``:chunk`` after it runs ``chunk_attention``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

EVENTS = {1: "done (producer: stage free?)", 2: "loaded", 3: "q_empty", 4: "q gathered", 10: "q_full",
          11: "k_full", 12: "v_full", 13: "turn", 15: "exchange", 99: "exit"}
ROLES = [f"wg{w // 4}.warp{w % 4}" for w in range(8)] + ["producer", "query", "idle", "idle"]
NWARPS = 12
FIELDS = ["flags", "src", "gidx", "head", "seq0", "nrows", "row0", "tile0", "tile1", "keylen", "slot"]


def _workload(case: str):
    from attn.workloads import Workload, spec_workload

    name = case.split(":")[0]
    if "," not in name:
        return spec_workload(name)
    b, hq, hkv, p, s = (int(x) for x in name.split(","))
    return Workload(f"b{b}-h{hq}/{hkv}-p{p}-s{s}", b, hq, hkv, ((1, p),) if p else (), s, 128)


def case_launch(case: str):
    """``(op, args, items, ctas)`` of a CASE on the GPU: the op, its bf16 inputs, and the tk
    plan's scheduled item table and CTA offsets (numpy) that its launch will run."""
    import torch

    import attn
    from attn.dispatch import get_backend
    from attn.problems import chunk_problem, shared_prefix_problem
    from attn.workloads import make_inputs, to_chunk_form

    from attn.tk_ext import unit_queue

    if unit_queue.enabled():  # its CTAs take their items as they go: no table says which ran where
        raise SystemExit("tk_trace / tk_timeline map items to CTAs by the plan's static ranges: unset ATTN_TK_QUEUE")
    w = _workload(case)
    chunk = case.endswith(":chunk")
    inp = make_inputs(w, torch.bfloat16, "cuda", seed=0)
    tk = get_backend("tk")
    if chunk:
        ch = to_chunk_form(inp, 64)
        args, prob = ch.args(), chunk_problem(*ch.args())
        items, ctas = tk.chunk_items(prob)[:2]
    else:
        args, prob = inp.args(), shared_prefix_problem(*inp.args())
        items, ctas = tk.level_items(prob)[:2]
    op = attn.chunk_attention if chunk else attn.shared_prefix_attention
    return op, args, items.cpu().numpy(), ctas.cpu().numpy()


def _child(case: str, timeout: float, traced: bool) -> int:
    import torch

    op, args, items, ctas = case_launch(case)
    trace = torch.full(((len(ctas) - 1) * NWARPS * 4,), -1, dtype=torch.int32, device="cuda")
    host = torch.empty(trace.shape, dtype=torch.int32, pin_memory=True)  # not after the launch: may sync
    os.environ["ATTN_TK_TRACE_PTR"] = str(trace.data_ptr())
    launch, side = torch.cuda.Stream(), torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(launch):
        out, lse = op(*args, return_lse=True, backend="tk")
    t0 = time.time()
    while not launch.query() and time.time() - t0 < timeout:
        time.sleep(0.05)
    if launch.query():
        ref, ref_lse = op(*args, return_lse=True, backend="triton")
        d_out = (out.float() - ref.float()).abs().max().item()
        d_lse = (lse - ref_lse).abs().nan_to_num(0.0).max().item()
        print(f"{case} {os.environ.get('ATTN_TK_SCHED', 'pingpong')}: finished, {len(items)} items on "
              f"{len(ctas) - 1} CTAs; max |tk - triton| out {d_out:.2e}, lse {d_lse:.2e}", flush=True)
        return 0 if d_out < 3e-2 and d_lse < 1e-2 else 2
    if not traced:
        print(f"{case} {os.environ.get('ATTN_TK_SCHED', 'pingpong')}: HUNG after {timeout:.0f} s "
              f"({len(items)} items; plain build, no positions)", flush=True)
        os._exit(3)
    with torch.cuda.stream(side):
        host.copy_(trace, non_blocking=True)
    side.synchronize()
    tr = host.numpy().reshape(-1, NWARPS, 4)
    stuck = [c for c in range(tr.shape[0]) if any(tr[c, k, 0] != 99 for k in range(10))]
    print(f"{case} {os.environ.get('ATTN_TK_SCHED', 'pingpong')}: HUNG after {timeout:.0f} s: "
          f"{len(stuck)} of {tr.shape[0]} CTAs unfinished, {len(items)} items", flush=True)
    for c in stuck[:6]:
        lo, hi = int(ctas[c]), int(ctas[c + 1])
        print(f"  CTA {c}: items [{lo}, {hi})")
        for i in range(lo, hi):
            print(f"    item {i}: " + " ".join(f"{f}={int(x)}" for f, x in zip(FIELDS, items[i])))
        for k in range(10):
            ev, it, g, x = (int(v) for v in tr[c, k])
            print(f"    {ROLES[k]:10s} {EVENTS.get(ev, ev)!s:28s} item {it} g/li {g} stage/buf/wg {x}")
    sys.stdout.flush()
    os._exit(3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--schedules", nargs="+", default=["pingpong"])
    ap.add_argument("--no-trace", action="store_true", help="the plain build: hang or not, no positions")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not a.no_trace:
        os.environ["ATTN_TK_NVCC_FLAGS"] = (os.environ.get("ATTN_TK_NVCC_FLAGS", "") + " -DATTN_TK_TRACE").strip()
        # The trace records 12 warps a CTA: trace builds have no decode-warpgroup kernels.
        os.environ["ATTN_TK_DECODE_WG"] = "0"
    if a.child:
        return _child(a.cases[0], a.timeout, not a.no_trace)
    from attn.tk_ext import build

    build.load()  # once, before the children (they reuse the cached build)
    bad = 0
    for case in a.cases:
        for sched in a.schedules:
            env = dict(os.environ, ATTN_TK_SCHED=sched)
            try:
                r = subprocess.run([sys.executable, __file__, "--child", "--timeout", str(a.timeout), case]
                                   + (["--no-trace"] if a.no_trace else []),
                                   env=env, timeout=a.timeout + 40)
                bad += r.returncode != 0
            except subprocess.TimeoutExpired:
                print(f"{case} {sched}: the child did not exit", flush=True)
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
