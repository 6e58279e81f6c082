"""``python -m attn compare``: every available backend on a set of workloads, timed and checked.

Prints one table (workload, op, backend, dtype, µs, TB/s, % of roofline, speedup over sdpa,
max error against the reference) and saves it as JSON with a PNG plot (``--out``).

On a GPU the default workloads are the spec's; elsewhere a small CPU set (the spec's
workloads shrunk) that runs the ``torch`` backend and Triton's interpreter, so the command
works on any machine. Timing is :mod:`attn.timing` (the same as ``bench/``); each result
is checked with the spec's criterion against the float64 oracle: on every row when the
workload is small, else on a subset of rows spread over the batch (the output says which).
Exit status 1 when any check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

#: above this many (sequence x key x query head x head dim) elements the oracle checks a subset of rows
FULL_ORACLE_ELEMENTS = 4e8
SUBSET_ROWS = 8


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)
    except ImportError:
        return _SimpleBar(total, desc)


class _SimpleBar:
    """A one-line progress bar on stderr for when tqdm is not installed."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.t0 = total, desc, 0, time.time()

    def set_postfix_str(self, s: str) -> None:
        self.post = s

    def update(self, k: int = 1) -> None:
        self.n += k
        frac = self.n / max(1, self.total)
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        print(f"\r{self.desc} [{bar}] {self.n}/{self.total} {time.time() - self.t0:.0f}s {getattr(self, 'post', '')[:40]:40s}",
              end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        print(file=sys.stderr)


class RowOracle:
    """The spec's criterion (:class:`attn.testing.Oracle`) on a subset of rows: the float64
    oracle of every sequence of a big workload is slow, a spread of rows is not."""

    def __init__(self, problem, rows: list):
        from .reference import naive_attention
        from .testing import _err

        self.problem, self.dtype, self.rows = problem, problem.dtype, rows
        kv = [self._row_kv(problem, b) for b in rows]
        q = problem.q[rows]
        self.ref_out, self.ref_lse = naive_attention(q, kv, problem.scale)
        self.empty = torch.isinf(self.ref_lse)
        lo, ll = naive_attention(q, kv, problem.scale, lowp=True)
        self.lowp_out_err = _err(lo, self.ref_out, ~self.empty)
        self.lowp_lse_err = _err(ll, self.ref_lse, ~self.empty)

    @staticmethod
    def _row_kv(p, b: int):
        n = p.batch
        ks = [lk[b // (n // lk.shape[0])] for lk in p.prefix_k]
        vs = [lv[b // (n // lv.shape[0])] for lv in p.prefix_v]
        if p.suffix_k is not None:
            s = int(p.suffix_lens[b]) if p.suffix_lens is not None else p.suffix_capacity
            ks.append(p.suffix_k[b, :s])
            vs.append(p.suffix_v[b, :s])
        return torch.cat(ks), torch.cat(vs)

    def judge(self, out, lse):
        from .testing import Oracle

        return Oracle.judge(self, out[self.rows], lse[self.rows])


def make_oracle(inputs):
    """``(oracle, description)`` for the level-form problem of ``inputs`` (whose rows are
    also the rows of the chunk form)."""
    from .testing import Oracle

    p = inputs.problem("shared_prefix")
    w = inputs.workload
    size = w.batch * (w.prefix_tokens + w.suffix) * w.q_heads * w.head_dim
    if size <= FULL_ORACLE_ELEMENTS:
        return Oracle(p), "float64 oracle, all rows"
    k = min(SUBSET_ROWS, w.batch)
    rows = sorted({round(i * (w.batch - 1) / max(1, k - 1)) for i in range(k)})
    return RowOracle(p, rows), f"float64 oracle, {len(rows)} of {w.batch} rows"


def _out_check(oracle, out) -> tuple:
    """``(max error, bound)`` of an output alone (sdpa returns no lse)."""
    from .testing import OUT_ATOL, _err

    rows = getattr(oracle, "rows", None)
    o = out[rows] if rows is not None else out
    keep = ~oracle.empty.to(o.device)
    err = _err(o, oracle.ref_out.to(o.device), keep[..., None].expand_as(o))
    return err, 2 * oracle.lowp_out_err + OUT_ATOL[oracle.dtype]


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m attn compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", action="append", default=[], help="workload name or id (repeatable; default: all)")
    ap.add_argument("--ragged", action="store_true", help="also the ragged-suffix variants")
    ap.add_argument("--backend", action="append", default=[], help="only this backend (repeatable; sdpa = baseline)")
    ap.add_argument("--dtype", action="append", default=[], choices=["bf16", "fp16"],
                    help="repeatable; default bf16 on a GPU, fp16 and bf16 on the CPU")
    ap.add_argument("--op", action="append", default=[], choices=["shared_prefix", "chunk"], help="repeatable")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 20 on a GPU, 3 on the CPU)")
    ap.add_argument("--cpu", action="store_true", help="the small CPU set even when a GPU is present")
    ap.add_argument("--no-check", action="store_true", help="skip the reference check")
    ap.add_argument("--out", default="out/compare", help="folder for compare.json and compare.png")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = _parse(argv)
    gpu = torch.cuda.is_available() and not a.cpu
    if not gpu and "triton" not in sys.modules:
        # Triton runs on the CPU only in its interpreter, chosen before triton is imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from . import backends
    from .cases import SDPA, SDPA_OP, backend_reasons, build_inputs, op_callable, small_workloads, spec_variants
    from .perf import DTYPES, fmt, machine_info, metrics, workload_params
    from .plots import run_plot
    from .timing import ceilings, time_op

    device = torch.device("cuda" if gpu else "cpu")
    pool = spec_variants() if gpu else small_workloads()
    workloads = [w for w in pool if (a.ragged or not w.ragged) and (not a.workload or w.name in a.workload or w.id in a.workload)]
    if not workloads:
        print(f"compare: no workload matches {a.workload}; known: {sorted({w.id for w in pool})}", file=sys.stderr)
        return 2
    dtypes = a.dtype or (["bf16"] if gpu else ["fp16", "bf16"])
    ops = a.op or ["shared_prefix", "chunk"]
    names = [SDPA] + list(backends())
    unknown = sorted(set(a.backend) - set(names))
    if unknown:
        print(f"compare: unknown backend(s) {unknown}; known: {names}", file=sys.stderr)
        return 2
    names = [n for n in names if not a.backend or n in a.backend]
    rounds = a.rounds or (20 if gpu else 3)
    ceil = ceilings(device) if gpu else None
    info = machine_info(ceil=ceil)
    cases = [(w, dt, n, op) for w in workloads for dt in dtypes for n in names for op in ((SDPA_OP,) if n == SDPA else ops)]

    records, skipped, checks = [], [], {}
    bar = _progress(len(cases), "compare")
    key, inputs, oracle = None, None, None
    sdpa_s: dict = {}
    interrupted = False
    try:
        for w, dt, name, op in cases:
            bar.set_postfix_str(f"{w.id} {name} {dt} {op}")
            if key != (w.id, dt):
                inputs = oracle = None
                if gpu:
                    torch.cuda.empty_cache()
                inputs, key = build_inputs(w, DTYPES[dt], device), (w.id, dt)
                if not a.no_check:
                    oracle, checks[w.id] = make_oracle(inputs)
            reasons = backend_reasons(name, inputs, op)
            if reasons:
                skipped.append({"workload": w.id, "backend": name, "dtype": dt, "op": op, "reasons": reasons})
                bar.update()
                continue
            rec = {"workload": w.id, "op": op, "backend": name, "dtype": dt, "params": workload_params(w)}
            try:
                fn = op_callable(name, inputs, op)
                result = fn()
            except Exception as e:  # a crashing backend is a failed row, not the end of the table
                rec.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
                records.append(rec)
                bar.update()
                continue
            if oracle is not None:
                if name == SDPA:
                    err, bound = _out_check(oracle, result)
                    rec.update(max_err=err, err_bound=bound, ok=bool(err <= bound and torch.isfinite(result).all()))
                else:
                    ag = oracle.judge(*result)
                    rec.update(max_err=ag.out_err, err_bound=ag.out_bound, lse_err=ag.lse_err, lse_bound=ag.lse_bound,
                               ok=ag.ok)
            del result
            t = time_op(fn, device, rounds=rounds)
            del fn
            if name == SDPA:
                sdpa_s[key] = t.median_s
            rec["timing"] = t.as_dict()
            # sdpa comes first in each (workload, dtype) group, so its time is known here
            rec.update(metrics(w, DTYPES[dt], t.median_s, suffix_lens=inputs.suffix_lens, ceilings=ceil,
                               sdpa_seconds=sdpa_s.get(key)))
            records.append(rec)
            bar.update()
    except KeyboardInterrupt:  # keep and save what was measured so far
        interrupted = True
    bar.close()
    print(_table(records, fmt))
    print(f"\ndevice: {info['gpu'] or 'CPU (no GPU: host timer, no roofline)'}"
          + (f", ceilings: copy {ceil.bandwidth / 1e12:.2f} TB/s, bf16 matmul {ceil.matmul / 1e12:.0f} TFLOP/s" if ceil else ""))
    for wid, how in checks.items():
        print(f"check of {wid}: {how}")
    grouped: dict = {}
    for s in skipped:
        grouped.setdefault((s["backend"], "; ".join(s["reasons"])), []).append(f"{s['workload']}/{s['dtype']}/{s['op']}")
    for (name, why), where in grouped.items():
        print(f"skipped {name} ({len(where)} case{'s' if len(where) > 1 else ''}): {why}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"machine_info": info, "checks": checks, "records": records, "skipped": skipped,
           "datetime": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (out / "compare.json").write_text(json.dumps(doc, indent=1))
    png = run_plot(records, out / "compare.png", f"python -m attn compare on {info['gpu'] or 'CPU'}")
    print(f"\nsaved {out / 'compare.json'} and {png}")
    for r in records:
        if r.get("error"):
            print(f"error {r['workload']}[{r['backend']}-{r['dtype']}-{r['op']}]: {r['error']}")
    if interrupted:
        print(f"INTERRUPTED after {len(records) + len(skipped)} of {len(cases)} cases")
    failed = [r for r in records if r.get("ok") is False]
    if failed:
        print(f"FAIL: {len(failed)} result(s) outside the spec's error bound: "
              + ", ".join(f"{r['workload']}[{r['backend']}-{r['dtype']}-{r['op']}]" for r in failed))
        return 1
    return 130 if interrupted else 0


def _table(records: list, fmt) -> str:
    head = ["workload", "op", "backend", "dtype", "µs", "TB/s", "% roofline", "vs sdpa", "max error", "ok"]
    rows = []
    for r in records:
        err = fmt(r.get("max_err"), ".2e") + ("" if r.get("err_bound") is None else f" (≤{r['err_bound']:.1e})")
        rows.append([r["workload"], r["op"], r["backend"], r["dtype"], fmt(r.get("median_us"), ".1f"),
                     fmt(r.get("TBps"), ".3f"), fmt(None if r.get("roofline_fraction") is None else 100 * r["roofline_fraction"], ".1f"),
                     fmt(r.get("speedup_vs_sdpa"), ".2f") + ("x" if r.get("speedup_vs_sdpa") else ""),
                     err, {True: "ok", False: "FAIL", None: "-"}[r.get("ok")]])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(wd) if i >= 4 and i < 8 else str(c).ljust(wd)  # noqa: E731
                                   for i, (c, wd) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * wd for wd in widths])] + [line(r) for r in rows])


if __name__ == "__main__":
    sys.exit(main())
