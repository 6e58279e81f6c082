"""Host work of a new chunk table: building the ``ChunkTable`` and planning it for the tk
backend (no GPU needed; the plan is made for a stand-in of ``--sms`` SMs).

A serving loop that builds a table every decode step pays both every step (a plan is cached
per table object). Prints the median of ``--repeat`` runs per spec workload, in chunk form
(``--cpu-min``: the least CPU time of them, steadier on a shared machine).

    PYTHONPATH=. python bench/host_time.py [--sms 132] [--repeat 5] [--cpu-min] [WORKLOAD ...]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from attn.problems import chunk_problem
from attn.table import ChunkTable
from attn.tk_ext import backend as tkb
from attn.workloads import make_inputs, spec_workload, to_chunk_form

SPEC = ["chunkattn-mha", "hydragen-mqa", "gqa-8b", "gqa-8b-long", "tree-3level", "no-share"]


def time_ms(fn, repeat: int, cpu_min: bool = False) -> float:
    """The median wall time of ``repeat`` calls, or with ``cpu_min`` the least CPU time of this
    process (steadier where other work shares the machine)."""
    clock = time.process_time if cpu_min else time.perf_counter
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return (min(times) if cpu_min else statistics.median(times)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workloads", nargs="*", default=SPEC)
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cpu-min", action="store_true", help="the least CPU time of the repeats, not the median wall time")
    args = ap.parse_args()
    what = "least CPU time" if args.cpu_min else "median"
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
          f"tk plan for {args.sms} SMs; {what} of {args.repeat}")
    print(f"{'workload':16} {'seqs x chunks':>14} {'table ms':>9} {'tk plan ms':>11}")
    for name in args.workloads:
        # head_dim 8: the host work does not depend on it, and the inputs stay small
        inp = to_chunk_form(make_inputs(spec_workload(name).with_(head_dim=8), torch.float16, "cpu"), 64)
        sc, cl = inp.table.seq_chunks, inp.table.chunk_lens
        table_ms = time_ms(lambda: ChunkTable.from_seq_chunks(sc, cl), args.repeat, args.cpu_min)
        p = chunk_problem(*inp.args())
        tk = tkb.TKBackend()
        tk._num_sms = lambda device: args.sms

        def plan():
            p.table.host.pop("tk", None)  # a new table each time
            tk.chunk_items(p)
        plan_ms = time_ms(plan, args.repeat, args.cpu_min)
        print(f"{name:16} {f'{sc.shape[0]} x {sc.shape[1]}':>14} {table_ms:9.1f} {plan_ms:11.1f}")


if __name__ == "__main__":
    main()
