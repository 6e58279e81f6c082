"""One-call GPU check of the ``triton`` backend: tests, CUDA-graph capture, and timings.

Run on a GPU machine from the repository root::

    PYTHONPATH=. python bench/triton_gpu_check.py --out $OUT [--skip-tests] [--only NAME ...]

1. the agreement grid (``tests/test_agreement.py --backend triton``, every dtype, the
   benchmark-sized cases included) and ``tests/test_triton.py`` (graph capture + replay,
   no host synchronisation), logs in ``OUT/tests.log``;
2. the GPU's copy bandwidth and bf16 matmul rate (:func:`attn.timing.ceilings`);
3. for every spec workload (and its ragged variant), both ops of ``triton`` and the sdpa
   baseline on materialised K/V: median µs by CUDA-graph replay with L2 flushed
   (:func:`attn.timing.time_op`) and by ``triton.testing.do_bench`` (events, median),
   effective TB/s from :func:`attn.workloads.ideal_bytes`, % of the roofline floor, speedup
   over sdpa, and the kernels of one call with their times (torch.profiler).

Writes ``OUT/triton_gpu.json`` and a markdown table ``OUT/triton_gpu.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch


def log(*a):
    print(*a, flush=True)


def run_tests(out_dir: str, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--backend", "triton",
           "tests/test_agreement.py", "tests/test_triton.py"]
    t0 = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    with open(os.path.join(out_dir, "tests.log"), "w") as f:
        f.write(text)
    tail = "\n".join(text.strip().splitlines()[-15:])
    log(f"tests rc={rc} in {time.time() - t0:.0f}s\n{tail}")
    return {"rc": rc, "seconds": time.time() - t0, "tail": tail}


def kernel_breakdown(fn, iters: int = 5) -> list:
    """Kernels of one call of ``fn`` in start order: name, start (µs after the first kernel's
    start: overlapped phases show as overlapping intervals) and GPU µs (the last call)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    evs = [e for e in prof.events() if getattr(e, "device_type", None) is not None
           and "CUDA" in str(e.device_type)]
    evs.sort(key=lambda e: e.time_range.start)
    per = len(evs) // iters if iters else 0
    last = evs[-per:] if per else []
    t0 = last[0].time_range.start if last else 0
    return [(e.name[:40], round(e.time_range.start - t0, 1), round(e.time_range.elapsed_us(), 1)) for e in last]


def graph_breakdown(fn, iters: int = 3) -> list:
    """:func:`kernel_breakdown` of ``fn`` captured in a CUDA graph and replayed: the phases
    overlap as they do in the timed replays (an eager call spaces them by Python's launches)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return kernel_breakdown(graph.replay, iters)


SHARED_CONFIGS = [  # (block_m or None for the heuristic's, block_n, warps, stages)
    (None, 64, 8, 2), (None, 64, 8, 3), (None, 128, 8, 2), (None, 128, 8, 3), (None, 32, 8, 3),
    (64, 64, 4, 3), (64, 128, 4, 3), (64, 64, 4, 4), (128, 64, 4, 3),
]
DECODE_CONFIGS = [(64, 4, 3), (64, 4, 4), (128, 4, 3), (128, 4, 2), (128, 8, 3), (32, 4, 4), (64, 2, 4)]


def phase_callable(inputs, kind: str, force: dict):
    """Only the ``kind`` ("prefix" or "suffix") launches of shared_prefix_attention, planned
    under ``force``; every phase writes partial states (no fold)."""
    from attn.triton import config
    from attn.triton.segment import launch_segment
    from attn.triton.shared_prefix import plan
    p = inputs.problem("shared_prefix")
    with config.forced(**force):
        steps = plan(p)
    b, hq, d = p.q.shape
    total = sum(st[2] for st in steps)
    po = torch.empty(total, b, hq, d, dtype=torch.float32, device=p.device)
    pl = torch.empty(total, b, hq, dtype=torch.float32, device=p.device)

    def run():
        base = 0
        for k, i, splits, split_len, tiles in steps:
            if k == kind:
                kk, vv, ll = (p.prefix_k[i], p.prefix_v[i], None) if k == "prefix" else (p.suffix_k, p.suffix_v, p.suffix_lens)
                launch_segment(p.q, kk, vv, ll, po, pl, base, splits, split_len, p.scale, tiles, kind=k)
            base += splits
    return run, [st for st in steps if st[0] == kind]


def sweep(dev, ceil, names) -> list:
    """Median µs of the prefix and suffix phases under each tile configuration."""
    from attn.cases import build_inputs, spec_variants
    from attn.timing import time_op
    out = []
    for w in spec_variants():
        if w.name not in names or w.ragged:
            continue
        inputs = build_inputs(w, torch.bfloat16, dev)
        for kind, configs in (("prefix", SHARED_CONFIGS), ("suffix", DECODE_CONFIGS)):
            if kind == "prefix" and not w.levels or kind == "suffix" and not w.suffix:
                continue
            for cfg in configs:
                if kind == "prefix":
                    bm, bn, warps, stages = cfg
                    force = {"shared_block_n": bn, "shared_warps": warps, "shared_stages": stages}
                    if bm:
                        force["block_m"] = bm
                else:
                    bn, warps, stages = cfg
                    force = {"decode_block_n": bn, "decode_warps": warps, "decode_stages": stages}
                try:
                    fn, steps = phase_callable(inputs, kind, force)
                    us = time_op(fn, dev, rounds=5).median_s * 1e6
                    desc = [(st[2], st[3], st[4].block_m) for st in steps]
                except Exception as e:
                    us, desc = float("nan"), repr(e)[:120]
                out.append({"workload": w.name, "phase": kind, "config": cfg, "us": us, "splits": desc})
                log(f"sweep {w.name:14s} {kind:6s} {cfg} {us:8.1f} us  splits/len/bm {desc}")
        del inputs
        torch.cuda.empty_cache()
    return out


VARIANTS = {  # name -> config.forced(...) keys: end-to-end op times per launch plan and tiles
    "overlap": {},
    "in-order": {"overlap": False},
    "ms256": {"prefix_min_split": 256},
    "ms512": {"prefix_min_split": 512},
    "ms2048": {"prefix_min_split": 2048},
    "bm128": {"block_m": 128},
    "ms683": {"prefix_min_split": 683},
    "wide": {"shared_block_n": 128},
    "fp32p": {"half_partials": False},
    "nofit": {"fit_stages": False},
    "fold1": {"fold_kv_heads": 1},
    "s2": {"shared_stages": 2},
    "d3": {"decode_stages": 3},
    # register caps (a 256-thread prefix CTA and a 128-thread decode CTA share an SM's 64 K
    # registers only if their counts fit; measured in logs/0011-*)
    "cap168": {"shared_maxnreg": 168},
    "dcap128": {"decode_maxnreg": 128},
    # a tree's leaf level and the suffixes in one launch (config.leaf_with_suffix), and the
    # order in which a 3-launch plan's phases start (tree-3level: root, level 2, leaves;
    # config.launch_order starts them as leaf-second)
    "noleaf": {"leaf_suffix": False},
    "leaf-first": {"launch_order": (2, 0, 1)},
    "leaf-second": {"launch_order": (0, 2, 1)},
    "in-plan-order": {"launch_order": (0, 1, 2)},
    "ptr": {"tma": False},
    "tma-prefix": {"tma": ("prefix",)},
    "tma-suffix": {"tma": ("suffix",)},
    "tma-leaf": {"tma": ("leaf+suffix",)},
    "tma-prefix-leaf": {"tma": ("prefix", "leaf+suffix")},
}


def variants(dev, names, timeline=None, judge=(), which=None, repeat=1, ops=("shared_prefix", "chunk")) -> list:
    """Median µs (CUDA-graph replay, L2 flushed) of both ops of every spec workload (bf16,
    uniform suffixes, and the ragged variants named by id in ``names``) under each :data:`VARIANTS` entry; for the workloads in ``timeline``,
    also the kernels of one graph replay with their start times (:func:`graph_breakdown`);
    for the variants in ``judge``, the float64 oracle's verdict on the output. ``repeat``:
    time each variant that many times, each with a new graph capture (``us`` is the median
    of those, ``us_each`` lists them); ``ops``: the ops timed."""
    oracles: dict = {}
    from attn.cases import build_inputs, op_callable, spec_variants
    from attn.timing import time_op
    from attn.triton import config
    out = []
    for w in spec_variants():
        # A ragged variant only when named by its id (``gqa-8b-ragged``).
        if (w.ragged and w.id not in (names or ())) or (not w.ragged and names and w.name not in names):
            continue
        inputs = build_inputs(w, torch.bfloat16, dev)
        for op in ops:
            line = []
            for name, force in VARIANTS.items():
                if which and name not in which:
                    continue
                each = []
                try:
                    with config.forced(**force):
                        for _ in range(max(1, repeat)):
                            each.append(time_op(op_callable("triton", inputs, op), dev, rounds=5).median_s * 1e6)
                    us = statistics.median(each)
                except Exception as e:
                    us = float("nan")
                    log(w.id, op, name, "ERROR", repr(e)[:200])
                row = {"workload": w.id, "op": op, "variant": name, "force": force, "us": us, "us_each": each}
                if timeline and w.name in timeline:
                    try:
                        with config.forced(**force):
                            row["kernels"] = graph_breakdown(op_callable("triton", inputs, op))
                        log(f"  timeline {w.id} {op} {name}: {row['kernels']}")
                    except Exception as e:
                        log(w.id, op, name, "timeline ERROR", repr(e)[:200])
                if name in judge:
                    try:
                        from attn.testing import Oracle
                        problem = inputs.problem(op)
                        oracles = oracles if oracles.get("key") == (w.id, op) else {"key": (w.id, op), "o": Oracle(problem)}
                        with config.forced(**force):
                            o, l = op_callable("triton", inputs, op)()
                        verdict = oracles["o"].judge(o, l)
                        row["oracle"] = str(verdict)
                        row["oracle_ok"] = bool(verdict.ok)
                        log(f"  oracle {w.id} {op} {name}: {verdict}")
                    except Exception as e:
                        log(w.id, op, name, "oracle ERROR", repr(e)[:200])
                out.append(row)
                line.append(f"{name} {us:.1f}" + (" [" + " ".join(f"{u:.1f}" for u in each) + "]" if repeat > 1 else ""))
            log(f"variants {w.id:14s} {op:13s} " + " | ".join(line))
        del inputs
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--test-timeout", type=int, default=200)
    ap.add_argument("--only", nargs="*", default=None, help="workload names to time")
    ap.add_argument("--sweep", nargs="*", default=None, help="workloads whose phases to time per tile config")
    ap.add_argument("--variants", nargs="*", default=None,
                    help="time both ops of these workloads (all if none named) under each launch-plan variant")
    ap.add_argument("--timeline", nargs="*", default=None,
                    help="with --variants: kernel start times and durations of a graph replay for these workloads")
    ap.add_argument("--judge", nargs="*", default=None,
                    help="with --variants: check these variants' outputs against the float64 oracle")
    ap.add_argument("--which", nargs="*", default=None, help="with --variants: only these variants")
    ap.add_argument("--ops", nargs="*", default=["shared_prefix", "chunk"], help="with --variants: the ops timed")
    ap.add_argument("--repeat", type=int, default=1, help="with --variants: captures timed per variant")
    ap.add_argument("--no-table", action="store_true", help="skip the per-workload table")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    import triton
    import triton.testing
    from attn.cases import build_inputs, op_callable, sdpa_unfit_reason, spec_variants
    from attn.perf import metrics
    from attn.timing import ceilings, time_op

    dev = torch.device("cuda")
    report = {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
              "command": " ".join(sys.argv)}
    log(report)
    if not args.skip_tests:
        report["tests"] = run_tests(args.out, args.test_timeout)

    c = ceilings(dev)
    report["ceilings"] = c.as_dict()
    log("ceilings", report["ceilings"])
    if args.sweep:
        report["sweep"] = sweep(dev, c, args.sweep)
        with open(os.path.join(args.out, "sweep.json"), "w") as f:
            json.dump(report["sweep"], f, indent=1, default=str)
    if args.variants is not None:
        report["variants"] = variants(dev, args.variants, args.timeline, args.judge or (), args.which,
                                      args.repeat, args.ops)
        with open(os.path.join(args.out, "variants.json"), "w") as f:
            json.dump(report["variants"], f, indent=1, default=str)
    rows = []
    for w in spec_variants():
        if args.no_table or args.only and w.name not in args.only:
            continue
        t0 = time.time()
        inputs = build_inputs(w, torch.bfloat16, dev)
        lens = inputs.suffix_lens
        sdpa_s = None
        entry = {"workload": w.id}
        reason = sdpa_unfit_reason(w, torch.bfloat16, dev)
        if reason is None:
            try:
                fn = op_callable("sdpa", inputs, "materialized")
                sdpa_s = time_op(fn, dev, rounds=10).median_s
                del fn
            except Exception as e:  # the baseline failing must not hide the kernels' numbers
                entry["sdpa_error"] = repr(e)[:200]
        else:
            entry["sdpa_error"] = reason
        torch.cuda.empty_cache()
        for op in ("shared_prefix", "chunk"):
            try:
                fn = op_callable("triton", inputs, op)
                tg = time_op(fn, dev, rounds=10).median_s
                tb = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median") / 1e3
                m = metrics(w, torch.bfloat16, tg, suffix_lens=lens, ceilings=c, sdpa_seconds=sdpa_s)
                m["do_bench_us"] = tb * 1e6
                try:
                    m["kernels"] = kernel_breakdown(fn)
                except Exception as e:
                    m["kernels"] = repr(e)[:100]
                entry[op] = m
                log(f"{w.id:22s} {op:13s} graph {m['median_us']:8.1f} us  do_bench {tb * 1e6:8.1f} us  "
                    f"{m['TBps']:.2f} TB/s  roof {m['roofline_fraction']:.2f}  floor {m['floor_us']:.1f} us  "
                    f"sdpa {m['sdpa_us']}  x{m['speedup_vs_sdpa']}  {m['kernels']}")
            except Exception as e:
                entry[op] = {"error": repr(e)[:300]}
                log(w.id, op, "ERROR", repr(e)[:300])
        rows.append(entry)
        del inputs
        torch.cuda.empty_cache()
        log(f"  ({time.time() - t0:.0f}s)")
    report["rows"] = rows
    with open(os.path.join(args.out, "triton_gpu.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    lines = [f"GPU {report['gpu']}, copy {c.bandwidth / 1e12:.2f} TB/s, bf16 matmul {c.matmul / 1e12:.0f} TFLOP/s",
             "", "| workload | op | µs (graph) | µs (do_bench) | TB/s | % roofline | sdpa µs | speedup |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        for op in ("shared_prefix", "chunk"):
            m = r.get(op, {})
            if "median_us" not in m:
                continue
            f = lambda x, s: "-" if x is None else format(x, s)  # noqa: E731
            lines.append(f"| {r['workload']} | {op} | {m['median_us']:.1f} | {m['do_bench_us']:.1f} | {m['TBps']:.2f} | "
                         f"{100 * m['roofline_fraction']:.0f}% | {f(m['sdpa_us'], '.1f')} | {f(m['speedup_vs_sdpa'], '.2f')} |")
    with open(os.path.join(args.out, "triton_gpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    log("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
