"""``python -m attn compare`` on its CPU set, and the plots (attn.plots, bench/plot.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="matplotlib (the bench extra) is not installed")

from attn.compare import main  # noqa: E402
from attn.plots import history_plot, run_plot  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_compare_on_the_cpu_set(tmp_path, capsys):
    rc = main(["--cpu", "--workload", "gqa-8b", "--workload", "tree-3level", "--ragged", "--backend", "torch",
               "--backend", "sdpa", "--dtype", "fp16", "--rounds", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    head = out.splitlines()[0].split()
    assert head[:4] == ["workload", "op", "backend", "dtype"] and "µs" in head and "max" in head
    for wid in ("gqa-8b", "gqa-8b-ragged", "tree-3level", "tree-3level-ragged"):
        assert f"check of {wid}: float64 oracle, all rows" in out
    doc = json.loads((tmp_path / "compare.json").read_text())
    got = {(r["workload"], r["backend"], r["op"]) for r in doc["records"]}
    assert ("gqa-8b-ragged", "torch", "chunk") in got and ("tree-3level", "sdpa", "materialized") in got
    assert len(got) == 4 * 3
    assert all(r["ok"] and r["max_err"] <= r["err_bound"] and r["median_us"] > 0 for r in doc["records"])
    assert all(r["speedup_vs_sdpa"] > 0 for r in doc["records"])
    assert (tmp_path / "compare.png").stat().st_size > 10_000


def test_compare_flags_a_wrong_backend(tmp_path, capsys, monkeypatch):
    """A backend whose output is off must fail the check (exit 1), not pass silently."""
    from attn import torch_backend

    real = torch_backend.TorchBackend.run_shared_prefix

    def off_by_a_bit(self, p):
        out, lse = real(self, p)
        return out + 0.05, lse

    monkeypatch.setattr(torch_backend.TorchBackend, "run_shared_prefix", off_by_a_bit)
    rc = main(["--cpu", "--workload", "no-share", "--backend", "torch", "--op", "shared_prefix", "--dtype", "fp16",
               "--rounds", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL" in out


def test_compare_via_python_m_attn(tmp_path):
    r = subprocess.run([sys.executable, "-m", "attn", "compare", "--cpu", "--workload", "no-share", "--backend", "torch",
                        "--dtype", "bf16", "--rounds", "1", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no-share" in r.stdout and (tmp_path / "compare.json").exists()


def test_plots_are_written(tmp_path):
    recs = [{"workload": w, "dtype": "bf16", "backend": b, "op": op, "median_us": 10.0,
             "roofline_fraction": f, "speedup_vs_sdpa": s}
            for w in ("gqa-8b", "no-share")
            for b, op, f, s in (("sdpa", "materialized", 0.1, 1.0), ("torch", "chunk", 0.05, 0.5), ("triton", "chunk", 0.7, 8.0))]
    p = run_plot(recs, tmp_path / "run.png", "test")
    assert p.stat().st_size > 10_000
    h = history_plot([("0001", 10.0, 0.5), ("0002", 12.0, None)], "gqa-8b[x]", tmp_path / "h.png")
    assert h.stat().st_size > 5_000


def test_plot_script_on_a_stored_run(tmp_path):
    d = tmp_path / "gpu" / "m"
    d.mkdir(parents=True)
    bench = [{"name": f"gqa-8b[{b}-bf16-{op}]", "stats": {"median": t},
              "extra_info": {"workload": "gqa-8b", "dtype": "bf16", "backend": b, "op": op, "median_us": t * 1e6,
                             "roofline_fraction": 0.3, "speedup_vs_sdpa": 2.0}}
             for b, op, t in (("sdpa", "materialized", 2e-3), ("torch", "chunk", 1e-3))]
    for i in (1, 2):
        doc = {"machine_info": {"gpu": "Some GPU"}, "datetime": f"2026-01-0{i}T00:00:00", "benchmarks": bench}
        (d / f"000{i}_x.json").write_text(json.dumps(doc))
    script = str(ROOT / "bench" / "plot.py")
    r = subprocess.run([sys.executable, script, "--results", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (d / "0002_x.png").stat().st_size > 10_000
    r = subprocess.run([sys.executable, script, "--results", str(tmp_path), "--history", "gqa-8b[torch-bf16-chunk]"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (d / "history-gqa-8b-torch-bf16-chunk.png").exists()


def test_compare_refuses_unknown_names(tmp_path, capsys):
    """A typo in --workload or --backend exits 2 naming what exists, before anything runs."""
    assert main(["--cpu", "--workload", "gqa-9b", "--out", str(tmp_path)]) == 2
    assert "no workload matches ['gqa-9b']" in capsys.readouterr().err
    assert main(["--cpu", "--workload", "no-share", "--backend", "trition", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown backend(s) ['trition']" in err and "triton" in err
    assert not (tmp_path / "compare.json").exists()


def test_compare_keeps_a_crashing_backend_as_a_failed_row(tmp_path, capsys, monkeypatch):
    """A backend that raises is a failed row of the table (exit 1), and the others still run."""
    from attn import torch_backend

    def crash(self, p):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(torch_backend.TorchBackend, "run_shared_prefix", crash)
    rc = main(["--cpu", "--workload", "no-share", "--backend", "torch", "--backend", "sdpa", "--dtype", "fp16",
               "--rounds", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1 and "RuntimeError: boom" in out and "second line" not in out
    doc = json.loads((tmp_path / "compare.json").read_text())
    rows = {(r["backend"], r["op"]): r for r in doc["records"]}
    assert rows[("torch", "shared_prefix")]["ok"] is False and "boom" in rows[("torch", "shared_prefix")]["error"]
    assert rows[("torch", "chunk")]["ok"] and rows[("sdpa", "materialized")]["ok"]
