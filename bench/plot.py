"""Plots of stored benchmark runs.

    python bench/plot.py [--results bench/results] [--run RUN] [--out DIR]
    python bench/plot.py --history 'gqa-8b[torch-bf16-shared_prefix]' [--results bench/results/<gpu>]

The first writes ``<out>/<run>.png``: fraction of roofline and speedup over sdpa per
workload and backend of one run (default: the newest; ``--out`` defaults to the run's
folder). The second writes ``<out>/history-<name>.png``: that benchmark's median over
every stored run of the newest run's GPU.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attn.perf import slug  # noqa: E402
from attn.plots import history_plot, run_plot  # noqa: E402
from attn.regress import find, runs_in  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/plot.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="bench/results")
    ap.add_argument("--run", default=None, help="path or name prefix of a stored run (default: the newest)")
    ap.add_argument("--history", default=None, metavar="NAME", help="benchmark name, e.g. 'gqa-8b[torch-bf16-chunk]'")
    ap.add_argument("--out", default=None, help="folder of the PNG (default: the run's folder)")
    a = ap.parse_args(argv)
    runs = runs_in(a.results)
    if not runs:
        print(f"plot: no stored runs under {a.results}", file=sys.stderr)
        return 2
    run = find(a.results, a.run, runs) if a.run else runs[-1]
    out = Path(a.out) if a.out else run.path.parent
    if a.history:
        points = []
        for r in runs:
            if r.gpu != run.gpu:
                continue
            for b in r.data["benchmarks"]:
                if b["name"] == a.history and b.get("stats"):
                    points.append((r.path.name.split("_")[0] + " " + r.when[:10], b["stats"]["median"] * 1e6,
                                   b.get("extra_info", {}).get("roofline_fraction")))
        if not points:
            print(f"plot: no stored run of {run.gpu} has {a.history!r}", file=sys.stderr)
            return 2
        p = history_plot(points, a.history, out / f"history-{slug(a.history)}.png", title=f"{a.history} on {run.gpu}")
    else:
        records = [b["extra_info"] for b in run.data["benchmarks"] if b.get("extra_info", {}).get("workload")]
        p = run_plot(records, out / (run.path.stem + ".png"), title=f"{run.gpu}: {run.path.stem}")
    print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
