"""tk consumer schedules, CTA item orders and partial dtypes on the GPU: correctness and time
of each, one build.

``ATTN_TK_SCHED`` (serial | pipeline | pingpong) is read at every launch and
``ATTN_TK_ORDER`` (mixed | lpt, :func:`attn.tk_ext.schedule.assign_ctas`) whenever a plan is built
(it is part of the plan's cache key) and ``ATTN_TK_PARTIALS`` (half | float32,
:func:`attn.tk_ext.backend.partial_dtype`) at every call, so one process checks each combination against the
float64 oracle on a case that exercises row-split items with partial and skipped tiles
(chunk size 128, ragged, shuffled pool), then times both ops of every spec workload (bf16,
CUDA-graph replay, L2 flushed) under each.

    PYTHONPATH=. python bench/tk_sched_check.py [--out DIR] [--schedules S ...] [--orders O ...]
        [--partials P ...] [--no-times]
"""
from __future__ import annotations

import argparse
import json
import os

import torch

import attn
from attn.problems import chunk_problem, shared_prefix_problem
from attn.testing import Oracle
from attn.timing import time_op
from attn.workloads import SPEC_WORKLOADS, Workload, make_inputs, to_chunk_form

SCHEDULES = ("serial", "pipeline", "pingpong")


def _set(schedule: str, order: str, partials: str) -> None:
    os.environ["ATTN_TK_SCHED"] = schedule
    os.environ["ATTN_TK_ORDER"] = order
    os.environ["ATTN_TK_PARTIALS"] = partials


def check(schedule: str, order: str, partials: str) -> list:
    _set(schedule, order, partials)
    verdicts = []
    for seed, (w, c) in enumerate([
        (Workload("c128", 32, 16, 4, ((1, 300), (4, 70)), 90, 128, ragged=True), 128),
        (Workload("c128-d64", 24, 8, 2, ((1, 150), (3, 100)), 40, 64, ragged=True), 128),
        (Workload("c64", 40, 8, 2, ((1, 600), (4, 200)), 90, 64, ragged=True), 64),
    ]):
        for dtype in (torch.bfloat16, torch.float16):
            inp = make_inputs(w, dtype, "cuda", seed=seed)
            ch = to_chunk_form(inp, c, shuffle=True, seed=seed)
            out, lse = attn.shared_prefix_attention(*inp.args(), return_lse=True, backend="tk")
            v1 = Oracle(shared_prefix_problem(*inp.args())).judge(out, lse)
            out, lse = attn.chunk_attention(*ch.args(), return_lse=True, backend="tk")
            v2 = Oracle(chunk_problem(*ch.args())).judge(out, lse)
            verdicts.append((w.name, str(dtype), v1.ok, v2.ok))
            print(f"check {schedule:9s} {order:5s} {partials:7s} {w.name:9s} {dtype} level {v1} | chunk {v2}", flush=True)
    return verdicts


def timings(combos) -> list:
    rows = []
    for w in SPEC_WORKLOADS:
        inp = make_inputs(w, torch.bfloat16, "cuda")
        ch = to_chunk_form(inp, 64)
        for s, order, partials in combos:
            _set(s, order, partials)
            res = {}
            for op, f in (("level", lambda: attn.shared_prefix_attention(*inp.args(), backend="tk")),
                          ("chunk", lambda: attn.chunk_attention(*ch.args(), backend="tk"))):
                res[op] = time_op(f, "cuda", rounds=5).median_s * 1e6
            rows.append({"workload": w.id, "schedule": s, "order": order, "partials": partials, **res})
            print(f"time {w.id:14s} {s:9s} {order:5s} {partials:7s} level {res['level']:8.1f} us  chunk {res['chunk']:8.1f} us", flush=True)
        del inp, ch
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--schedules", nargs="*", default=list(SCHEDULES))
    ap.add_argument("--orders", nargs="*", default=["mixed"])
    ap.add_argument("--partials", nargs="*", default=["half"])
    ap.add_argument("--no-times", action="store_true", help="only the oracle checks")
    args = ap.parse_args()
    combos = [(s, o, p) for s in args.schedules for o in args.orders for p in args.partials]
    report = {"gpu": torch.cuda.get_device_name(), "checks": {"/".join(c): check(*c) for c in combos},
              "times": [] if args.no_times else timings(combos)}
    with open(os.path.join(args.out, "tk_sched.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
