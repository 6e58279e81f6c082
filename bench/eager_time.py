"""Host time of eager calls: what a decode loop that does not replay CUDA graphs pays per call.

For each workload, backend and op, four per-call times in µs:

- ``api host``: issuing one call of the public op (``attn.shared_prefix_attention`` /
  ``attn.chunk_attention`` with ``backend=``), ``--calls`` calls back to back with the GPU
  left to run behind; the least of ``--repeat`` repeats. A call that synchronises (the range
  check of ragged ``suffix_lens`` on the GPU reads them) waits for the GPU there, so on ragged
  workloads this is at least the GPU's time; ``--host-lens`` passes them on the CPU instead.
- ``run host``: the same for the backend's ``run`` on a validated problem (no validation, no
  dispatch: what ``bench/`` times on the GPU, here on the host).
- ``api wall``: the median over the repeats of ``--calls`` public calls ended by a synchronize,
  per call: the larger of the host's and the GPU's time, which is what an eager loop gets.
- ``gpu``: the backend's ``run`` replayed in a CUDA graph (``attn.timing``, L2 flushed), for
  comparison: where ``api wall`` exceeds it, the eager loop is host-bound.

    PYTHONPATH=. python bench/eager_time.py [--backend tk] [--op chunk] [--calls 50] [--profile 15] [WORKLOAD ...]

``--profile N`` also prints, per case, the N functions with the most own time (cProfile) over
``--calls`` public calls.

Needs a CUDA device. Workload names are the spec's, with ``-ragged`` for the ragged variants.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time

import torch

import attn
from attn.cases import OPS, backend_reasons, build_inputs, op_callable, spec_variants
from attn.timing import time_op


def public_call(inputs, op: str, backend: str, host_lens: bool = False):
    """A no-argument callable of the public op on ``inputs`` (validation and dispatch included);
    ``host_lens``: ``suffix_lens`` on the CPU (checked there, no sync)."""
    if op == "shared_prefix":
        args = inputs.level.args()
        if host_lens and args[-1] is not None:
            args = args[:-1] + (args[-1].cpu(),)
        return lambda: attn.shared_prefix_attention(*args, backend=backend)
    args = inputs.chunk.args()
    return lambda: attn.chunk_attention(*args, backend=backend)


def host_us(fn, calls: int, repeat: int, sync=torch.cuda.synchronize) -> tuple[float, float]:
    """(least host time to issue one call, median wall time per call up to a ``sync``), µs."""
    issue, wall = [], []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        issue.append((t1 - t0) / calls)
        wall.append((t2 - t0) / calls)
    return min(issue) * 1e6, statistics.median(wall) * 1e6


def profile(fn, calls: int, top: int) -> str:
    """The ``top`` functions by own time (cProfile) over ``calls`` calls of ``fn``, in µs per call
    of ``fn`` (cProfile adds its own cost to each Python-level call, not to the builtins')."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    rows = sorted(pstats.Stats(prof).stats.items(), key=lambda kv: -kv[1][2])[:top]
    lines = [f"    {'own µs':>8} {'cum µs':>8} {'n':>4}  function (per call of the op)"]
    for (file, line, func), (_, ncalls, own, cum, _) in rows:
        where = func if file == "~" else f"{file.rsplit('/', 2)[-1] if '/' in file else file}:{line}({func})"
        lines.append(f"    {own * 1e6 / calls:8.2f} {cum * 1e6 / calls:8.2f} {ncalls / calls:4.0f}  {where}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workloads", nargs="*", help="default: every spec workload and its ragged variant")
    ap.add_argument("--backend", action="append", default=[], help="repeatable; default: tk and triton")
    ap.add_argument("--op", action="append", default=[], choices=OPS, help="repeatable; default: both")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    ap.add_argument("--calls", type=int, default=50, help="calls per repeat (keep the launch queue unfilled)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--host-lens", action="store_true",
                    help="shared_prefix: pass suffix_lens on the CPU (the check then needs no sync)")
    ap.add_argument("--no-gpu-time", action="store_true", help="skip the graph-replay column")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print each case's top N functions by own time")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("eager_time: no CUDA device (host time of eager calls is measured against a GPU)", file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    known = {w.id: w for w in spec_variants()}
    names = args.workloads or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; known: {sorted(known)}")
    backends = args.backend or ["tk", "triton"]
    ops = args.op or list(OPS)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, {args.dtype}; "
          f"{args.calls} calls x {args.repeat} repeats; µs per call")
    print(f"{'workload':22} {'backend':7} {'op':13} {'api host':>9} {'run host':>9} {'api wall':>9} {'gpu':>8}")
    for name in names:
        inputs = build_inputs(known[name], dtype, "cuda")
        for backend in backends:
            for op in ops:
                reasons = backend_reasons(backend, inputs, op)
                if reasons:
                    print(f"{name:22} {backend:7} {op:13} skipped: {'; '.join(reasons)}")
                    continue
                api, run = public_call(inputs, op, backend, args.host_lens), op_callable(backend, inputs, op)
                for _ in range(3):  # warm-up: builds, plans, caches
                    api(), run()
                api_host, api_wall = host_us(api, args.calls, args.repeat)
                run_host, _ = host_us(run, args.calls, args.repeat)
                gpu = "" if args.no_gpu_time else f"{time_op(run, 'cuda', rounds=5).median_us:8.1f}"
                print(f"{name:22} {backend:7} {op:13} {api_host:9.1f} {run_host:9.1f} {api_wall:9.1f} {gpu:>8}",
                      flush=True)
                if args.profile:
                    print(profile(api, args.calls, args.profile), flush=True)
        del inputs
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
