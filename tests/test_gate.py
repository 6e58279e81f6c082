"""The regression gate (attn.regress, python bench/gate.py) on synthetic stored runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from attn.regress import compare, load, main

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["gqa-8b[torch-bf16-shared_prefix]", "gqa-8b[sdpa-bf16-materialized]", "no-share[torch-bf16-chunk]"]


def write_run(folder: Path, number: int, when: str, medians: dict, gpu: str = "NVIDIA H100 80GB HBM3") -> Path:
    """A file shaped like pytest-benchmark's storage (only what the gate reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"machine_info": {"gpu": gpu}, "commit_info": {"id": f"{number:040d}"}, "datetime": when, "version": "5.2.3",
           "benchmarks": [{"name": n, "fullname": f"bench/test_bench.py::test_bench[{n}]", "extra_info": {},
                           "stats": {"median": m, "min": m, "max": m}} for n, m in medians.items()]}
    p = folder / f"{number:04d}_{number:040d}_{when[:10].replace('-', '')}.json"
    p.write_text(json.dumps(doc))
    return p


def base():
    return {n: 1e-4 * (i + 1) for i, n in enumerate(NAMES)}


def test_unchanged_run_passes(tmp_path, capsys):
    d = tmp_path / "nvidia-h100" / "Linux-CPython-3.12-64bit"
    write_run(d, 1, "2026-01-01T00:00:00", base())
    write_run(d, 2, "2026-01-02T00:00:00", {n: m * 1.05 for n, m in base().items()})  # noise, under 10 %
    assert main(["--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and all(n in out for n in NAMES) and "+5.0%" in out


def test_slowed_run_is_flagged(tmp_path, capsys):
    d = tmp_path / "nvidia-h100" / "m"
    write_run(d, 1, "2026-01-01T00:00:00", base())
    slowed = base()
    slowed[NAMES[0]] *= 1.25
    write_run(d, 2, "2026-01-02T00:00:00", slowed)
    assert main(["--results", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "SLOWER" in out and "+25.0%" in out and "FAIL: 1 of 3" in out and NAMES[0] in out.split("FAIL")[1]
    # a looser threshold lets it pass; a chosen earlier run is honoured
    assert main(["--results", str(tmp_path), "--threshold", "0.3"]) == 0
    assert main(["--results", str(tmp_path), "--run", "0001", "--against", "0002"]) == 0  # old vs slower: faster


def test_against_picks_the_earlier_run(tmp_path):
    d = tmp_path / "g" / "m"
    write_run(d, 1, "2026-01-01T00:00:00", {n: m * 2 for n, m in base().items()})  # slow old run
    write_run(d, 2, "2026-01-02T00:00:00", base())
    write_run(d, 3, "2026-01-03T00:00:00", {n: m * 1.5 for n, m in base().items()})
    assert main(["--results", str(tmp_path)]) == 1  # newest vs 0002: 50 % slower
    assert main(["--results", str(tmp_path), "--against", "0001"]) == 0  # vs the slow 0001: faster


def test_different_gpus_are_refused(tmp_path, capsys):
    write_run(tmp_path / "h100" / "m", 1, "2026-01-01T00:00:00", base(), gpu="NVIDIA H100 80GB HBM3")
    write_run(tmp_path / "h200" / "m", 2, "2026-01-02T00:00:00", base(), gpu="NVIDIA H200")
    assert main(["--results", str(tmp_path), "--against", "0001"]) == 2
    assert "different GPUs" in capsys.readouterr().err
    # without --against only runs of the newest run's GPU are candidates: there are none
    assert main(["--results", str(tmp_path)]) == 2


def test_no_runs(tmp_path):
    assert main(["--results", str(tmp_path)]) == 2


def test_compare_reports_added_and_removed(tmp_path):
    d = tmp_path / "g" / "m"
    old = load(write_run(d, 1, "2026-01-01T00:00:00", base()))
    new_medians = dict(base())
    del new_medians[NAMES[2]]
    new_medians["new[x-bf16-chunk]"] = 1.0
    new = load(write_run(d, 2, "2026-01-02T00:00:00", new_medians))
    changes, slower, only_old, only_new = compare(old, new, 0.1)
    assert len(changes) == 2 and not slower and only_old == [NAMES[2]] and only_new == ["new[x-bf16-chunk]"]


def test_gate_script_on_the_committed_gpu_runs(tmp_path):
    """The CLI on real stored runs: the newest committed run of each GPU against a copy slowed by 20 %."""
    runs = sorted((ROOT / "bench" / "results").rglob("*.json"))
    runs = [p for p in runs if "benchmarks" in json.loads(p.read_text())]
    if not runs:
        import pytest

        pytest.skip("no stored GPU run under bench/results yet")
    real = json.loads(runs[-1].read_text())
    d = tmp_path / "g" / "m"
    d.mkdir(parents=True)
    (d / "0001_real.json").write_text(json.dumps(real))
    for b in real["benchmarks"]:
        b["stats"]["median"] *= 1.2
    real["datetime"] = "9999-01-01T00:00:00"
    (d / "0002_slowed.json").write_text(json.dumps(real))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gate.py"), "--results", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "SLOWER" in r.stdout and "+20.0%" in r.stdout


def test_table_ends_with_the_geometric_mean(tmp_path, capsys):
    d = tmp_path / "nvidia-h100" / "m"
    write_run(d, 1, "2026-01-01T00:00:00", base())
    ratios = [0.5, 2.0, 1.25]  # geometric mean 1.25 ** (1 / 3)
    write_run(d, 2, "2026-01-02T00:00:00", {n: m * r for (n, m), r in zip(base().items(), ratios)})
    main(["--results", str(tmp_path), "--threshold", "10"])
    last = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("geometric mean")]
    assert len(last) == 1 and last[0].split()[-1] == f"{100 * (1.25 ** (1 / 3) - 1):+.1f}%"
