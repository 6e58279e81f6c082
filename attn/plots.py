"""PNG plots of benchmark results (matplotlib, from the ``bench`` extra).

A *record* is one result's dict as ``bench/`` stores it in ``extra_info`` and
``python -m attn compare`` in its JSON: ``workload, op, backend, dtype, median_us,
roofline_fraction, speedup_vs_sdpa``.
"""
from __future__ import annotations

import math
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on CI or the GPU machine
    import matplotlib.pyplot as plt

    return plt


def _series_name(r: dict) -> str:
    return "sdpa (materialised K/V)" if r["backend"] == "sdpa" else f"{r['backend']} {r['op']}"


def run_plot(records: list, path, title: str) -> Path:
    """Fraction of roofline and speedup over sdpa, per workload (and dtype) and backend.

    Returns the path written.
    """
    plt = _pyplot()
    recs = [r for r in records if r.get("median_us")]
    groups = list(dict.fromkeys(f"{r['workload']}\n{r['dtype']}" for r in recs))
    series = list(dict.fromkeys(_series_name(r) for r in recs))
    width = 0.8 / max(1, len(series))
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.9 * len(groups) + 3), 8), sharex=True)
    panels = (("roofline_fraction", "fraction of roofline"), ("speedup_vs_sdpa", "speedup over sdpa"))
    for ax, (key, label) in zip(axes, panels):
        drawn = False
        for si, s in enumerate(series):
            xs, ys = [], []
            for gi, g in enumerate(groups):
                for r in recs:
                    if f"{r['workload']}\n{r['dtype']}" == g and _series_name(r) == s and r.get(key) is not None:
                        xs.append(gi + (si - (len(series) - 1) / 2) * width)
                        ys.append(r[key])
            if xs:
                ax.bar(xs, ys, width=width, label=s)
                drawn = True
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        if key == "speedup_vs_sdpa":
            ax.axhline(1.0, color="black", linewidth=0.8)
            vals = [r[key] for r in recs if r.get(key)]
            if vals and max(vals) / min(vals) > 20:
                ax.set_yscale("log")
        else:
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        if not drawn:
            ax.text(0.5, 0.5, f"no {label} (no GPU ceilings or no baseline in this run)",
                    ha="center", va="center", transform=ax.transAxes)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, ncol=min(4, max(1, len(series))))
            break
    axes[-1].set_xticks(range(len(groups)))
    axes[-1].set_xticklabels(groups, rotation=60, ha="right", fontsize=8)
    fig.suptitle(title)
    return _save(plt, fig, path)


def history_plot(points: list, name: str, path, title: str = "") -> Path:
    """Median µs of benchmark ``name`` over stored runs.

    ``points``: ``(label, median_us, roofline_fraction or None)`` oldest first.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(points) + 3), 4))
    xs = list(range(len(points)))
    ax.plot(xs, [p[1] for p in points], marker="o")
    ax.set_xticks(xs)
    ax.set_xticklabels([p[0] for p in points], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("median µs per call")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    for x, p in zip(xs, points):
        if p[2] is not None and math.isfinite(p[2]):
            ax.annotate(f"{100 * p[2]:.0f}% roof", (x, p[1]), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7)
    ax.set_title(title or name)
    return _save(plt, fig, path)


def _save(plt, fig, path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
