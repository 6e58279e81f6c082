"""Host work of a new chunk table: building the ``ChunkTable`` and planning it for the tk
backend (no GPU needed; the plan is made for a stand-in of ``--sms`` SMs).

A serving loop that builds a table every decode step pays both every step (a plan is cached
per table object). Prints the median of ``--repeat`` runs per spec workload, in chunk form.

    PYTHONPATH=. python bench/host_time.py [--sms 132] [--repeat 5] [WORKLOAD ...]
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


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workloads", nargs="*", default=SPEC)
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
          f"tk plan for {args.sms} SMs; median of {args.repeat}")
    print(f"{'workload':16} {'seqs x chunks':>14} {'table ms':>9} {'tk plan ms':>11}")
    for name in args.workloads:
        # head_dim 8: the host work does not depend on it, and the inputs stay small
        inp = to_chunk_form(make_inputs(spec_workload(name).with_(head_dim=8), torch.float16, "cpu"), 64)
        sc, cl = inp.table.seq_chunks, inp.table.chunk_lens
        table_ms = median_ms(lambda: ChunkTable.from_seq_chunks(sc, cl), args.repeat)
        p = chunk_problem(*inp.args())
        tk = tkb.TKBackend()
        tk._num_sms = lambda device: args.sms

        def plan():
            p.table.host.pop("tk", None)  # a new table each time
            tk.chunk_items(p)
        plan_ms = median_ms(plan, args.repeat)
        print(f"{name:16} {f'{sc.shape[0]} x {sc.shape[1]}':>14} {table_ms:9.1f} {plan_ms:11.1f}")


if __name__ == "__main__":
    main()
