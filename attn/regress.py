"""Regression gate over stored pytest-benchmark runs (``python bench/gate.py``).

Runs live under ``bench/results/<gpu-slug>/<machine-id>/NNNN_<commit>_<date>.json``
(pytest-benchmark's file storage). The gate compares the newest run with an earlier run
of the same GPU (by default the one before it), prints one line per benchmark present in
both with its median change, and exits

- 0 when no median got slower by more than the threshold,
- 1 when at least one did,
- 2 when it cannot compare (no runs, or runs of different GPUs: timings of two GPUs say
  nothing about a regression).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

DEFAULT_THRESHOLD = 0.10


@dataclass
class Run:
    path: Path
    data: dict

    @property
    def gpu(self) -> str:
        m = self.data.get("machine_info", {})
        return m.get("gpu") or f"no GPU ({m.get('gpu_slug') or m.get('machine', '?')})"

    @property
    def when(self) -> str:
        return self.data.get("datetime", "")

    @property
    def label(self) -> str:
        commit = (self.data.get("commit_info") or {}).get("id") or "?"
        return f"{self.path.name} ({self.when[:19]}, commit {commit[:8]})"

    def medians(self) -> dict:
        """Benchmark name -> median seconds per call."""
        return {b["name"]: b["stats"]["median"] for b in self.data.get("benchmarks", []) if b.get("stats")}


def load(path) -> Run:
    p = Path(path)
    return Run(p, json.loads(p.read_text()))


def runs_in(results) -> list:
    """Every stored run under ``results`` (recursively), oldest first."""
    runs = []
    for p in sorted(Path(results).rglob("*.json")):
        try:
            r = load(p)
        except (ValueError, OSError):
            continue
        if "benchmarks" in r.data:
            runs.append(r)
    return sorted(runs, key=lambda r: (r.when, r.path.name))


def find(results, spec: str, runs: Optional[list] = None) -> Run:
    """A run named by a path, a file name, or a prefix of it (``0003``)."""
    if Path(spec).is_file():
        return load(spec)
    hits = [r for r in (runs if runs is not None else runs_in(results)) if r.path.name.startswith(spec)]
    if len(hits) != 1:
        raise SystemExit(f"gate: {'no' if not hits else 'several'} stored runs match {spec!r} under {results}"
                         + ("" if not hits else ": " + ", ".join(str(h.path) for h in hits)))
    return hits[0]


@dataclass
class Change:
    name: str
    old: float
    new: float

    @property
    def ratio(self) -> float:
        return self.new / self.old if self.old > 0 else float("inf")


def compare(old: Run, new: Run, threshold: float = DEFAULT_THRESHOLD):
    """``(changes, slower, only_old, only_new)``: per-benchmark medians of both runs, the
    changes slower than ``1 + threshold``, and the names found in one run only."""
    mo, mn = old.medians(), new.medians()
    changes = [Change(n, mo[n], mn[n]) for n in mo if n in mn]
    slower = [c for c in changes if c.ratio > 1 + threshold]
    return changes, slower, sorted(set(mo) - set(mn)), sorted(set(mn) - set(mo))


def table(changes: list, threshold: float) -> str:
    width = max([len(c.name) for c in changes] + [9])
    lines = [f"{'benchmark':{width}s}  {'old µs':>10s}  {'new µs':>10s}  {'change':>8s}"]
    for c in sorted(changes, key=lambda c: c.name):
        flag = "  SLOWER" if c.ratio > 1 + threshold else ("  faster" if c.ratio < 1 - threshold else "")
        lines.append(f"{c.name:{width}s}  {c.old * 1e6:10.1f}  {c.new * 1e6:10.1f}  {100 * (c.ratio - 1):+7.1f}%{flag}")
    lines.append(f"{'geometric mean':{width}s}  {'':10s}  {'':10s}  {100 * (geomean_ratio(changes) - 1):+7.1f}%")
    return "\n".join(lines)


def geomean_ratio(changes: list) -> float:
    """The geometric mean of the changes' new / old medians (one number for a variant)."""
    ratios = [c.ratio for c in changes if 0 < c.ratio < float("inf")]
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else 1.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/gate.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="bench/results", help="folder of stored runs (default bench/results)")
    ap.add_argument("--run", default=None, help="the run to check (path or name prefix; default: the newest)")
    ap.add_argument("--against", default=None,
                    help="the earlier run (path or name prefix; default: the newest earlier run of the same GPU)")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                    help="fail when a median is slower by more than this fraction (default 0.10)")
    a = ap.parse_args(argv)
    runs = runs_in(a.results)
    if a.run is None and not runs:
        print(f"gate: no stored runs under {a.results}", file=sys.stderr)
        return 2
    new = find(a.results, a.run, runs) if a.run else runs[-1]
    if a.against:
        old = find(a.results, a.against, runs)
    else:
        earlier = [r for r in runs if r.gpu == new.gpu and (r.when, r.path.name) < (new.when, new.path.name)]
        if not earlier:
            print(f"gate: no earlier run of {new.gpu} to compare {new.label} with", file=sys.stderr)
            return 2
        old = earlier[-1]
    if old.gpu != new.gpu:
        print(f"gate: refusing to compare runs of different GPUs: {old.gpu} ({old.path}) vs {new.gpu} ({new.path})",
              file=sys.stderr)
        return 2
    changes, slower, only_old, only_new = compare(old, new, a.threshold)
    print(f"GPU: {new.gpu}\nold: {old.label}\nnew: {new.label}\nthreshold: {100 * a.threshold:.0f}% slower median\n")
    print(table(changes, a.threshold) if changes else "(no benchmark in both runs)")
    if only_old:
        print(f"\nonly in the old run ({len(only_old)}): " + ", ".join(only_old))
    if only_new:
        print(f"\nonly in the new run ({len(only_new)}): " + ", ".join(only_new))
    if slower:
        print(f"\nFAIL: {len(slower)} of {len(changes)} medians slower by more than {100 * a.threshold:.0f}%: "
              + ", ".join(c.name for c in slower))
        return 1
    print(f"\nOK: no median slower by more than {100 * a.threshold:.0f}% ({len(changes)} compared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
