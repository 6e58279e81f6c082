"""The ``tk`` backend: its Python side everywhere, its kernels on an sm_90 GPU.

On a CPU machine the availability reasons, cache keys, THUNDERKITTENS_ROOT handling, argument
marshalling and the work-item plans are tested (the plans by executing them with a float64
emulation of the kernel's semantics); GPU tests skip with the backend's reason.
"""
from __future__ import annotations

import math

import numpy as np
import os
import shutil
from pathlib import Path

import pytest
import torch

import attn
from attn.problems import chunk_problem, shared_prefix_problem
from attn.reference import reference
from attn.testing import Oracle
from attn.tk_ext import backend as tkb
from attn.tk_ext import build, plan, schedule
from attn.torch_backend import merge
from attn.workloads import Workload, make_inputs, to_chunk_form
from cases import CASES
from conftest import require_backend

W = Workload


# ---- availability and build ------------------------------------------------------------

def _bench_module(name: str):
    """bench/NAME.py imported as a module (bench/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_cuda_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reasons = tkb.TKBackend().unavailable_reasons() if build._module is None else build.environment_reasons()
    assert any("no CUDA device" in r for r in reasons)


def test_capability_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    reasons = build.environment_reasons()
    assert any("compute capability 8.0 is not 9.0" in r for r in reasons)


def test_tk_root_missing_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("THUNDERKITTENS_ROOT", str(tmp_path / "nowhere"))
    assert build.tk_root() is None
    msg = " ".join(build.environment_reasons())
    assert "THUNDERKITTENS_ROOT" in msg and build.TK_COMMIT in msg and "git clone" in msg


def test_tk_root_env_and_cwd(monkeypatch, tmp_path):
    fake = tmp_path / "tk"
    (fake / "include").mkdir(parents=True)
    (fake / "include" / "kittens.cuh").write_text("// stub\n")
    monkeypatch.setenv("THUNDERKITTENS_ROOT", str(fake))
    assert build.tk_root() == fake.resolve()
    # Without the variable: the repository's third_party first, then the current directory's.
    monkeypatch.delenv("THUNDERKITTENS_ROOT")
    monkeypatch.setattr(build, "REPO_ROOT", tmp_path / "elsewhere")
    cwd = tmp_path / "work"
    (cwd / "third_party").mkdir(parents=True)
    (cwd / "third_party" / "ThunderKittens").symlink_to(fake)
    monkeypatch.chdir(cwd)
    assert build.tk_root() == fake.resolve()


def test_cache_key_depends_on_arch_torch_and_sources(monkeypatch):
    root = build.tk_root()
    k90 = build.cache_key("sm_90", root)
    assert k90 == build.cache_key("sm_90", root)
    assert k90 != build.cache_key("sm_100", root)
    monkeypatch.setattr(torch, "__version__", torch.__version__ + "+other")
    assert k90 != build.cache_key("sm_90", root)
    monkeypatch.undo()
    real = build._hashed_files()
    monkeypatch.setattr(build, "_hashed_files", lambda: real[:-1])
    assert k90 != build.cache_key("sm_90", root)


def test_extra_nvcc_flags_reach_the_build_and_the_cache_key(monkeypatch, tmp_path):
    root = build.tk_root() or tmp_path
    monkeypatch.delenv("ATTN_TK_NVCC_FLAGS", raising=False)
    plain = build.cache_key("sm_90", root)
    monkeypatch.setenv("ATTN_TK_NVCC_FLAGS", " -DATTN_TK_TRACE  -lineinfo ")
    assert build.nvcc_flags()[-2:] == ["-DATTN_TK_TRACE", "-lineinfo"]
    assert build.build_args(root, tmp_path, "k")["extra_cuda_cflags"][-2:] == ["-DATTN_TK_TRACE", "-lineinfo"]
    assert build.cache_key("sm_90", root) != plain


def test_another_source_dir_builds_from_its_files_under_its_own_key(monkeypatch, tmp_path):
    root = build.tk_root() or tmp_path
    monkeypatch.delenv("ATTN_TK_CSRC", raising=False)
    plain = build.cache_key("sm_90", root)
    other = tmp_path / "csrc"
    shutil.copytree(build.CSRC, other)
    monkeypatch.setenv("ATTN_TK_CSRC", str(other))
    assert build.cache_key("sm_90", root) == plain  # same bytes, same key
    (other / "stacked.cuh").write_text((other / "stacked.cuh").read_text() + "\n// B\n")
    assert build.cache_key("sm_90", root) != plain
    args = build.build_args(root, tmp_path, "k")
    assert args["sources"] and all(Path(s).parent == other.resolve() for s in args["sources"])
    assert str(other.resolve()) in args["extra_include_paths"]


def test_package_data_ships_every_kernel_source():
    """A wheel (not only an editable install) must carry csrc/: the extension builds from it."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["attn.tk_ext"]
    # setuptools globs each pattern from the package's directory ("*" stays in one directory)
    shipped = {p for pat in patterns for p in build.CSRC.parent.glob(pat)}
    files = {p for p in build.CSRC.iterdir() if p.is_file() and p.suffix in (".cu", ".cuh", ".cpp", ".h")}
    assert files and files <= shipped, sorted(p.name for p in files - shipped)


def test_info_names_extra_nvcc_flags(monkeypatch):
    from attn.tk_ext.backend import TKBackend

    monkeypatch.delenv("ATTN_TK_NVCC_FLAGS", raising=False)
    assert "extra nvcc flags" not in TKBackend().versions()
    monkeypatch.setenv("ATTN_TK_NVCC_FLAGS", "-DATTN_TK_TRACE")
    assert TKBackend().versions()["extra nvcc flags"] == "-DATTN_TK_TRACE"


def test_info_names_another_source_dir(monkeypatch, tmp_path):
    from attn.tk_ext.backend import TKBackend

    monkeypatch.delenv("ATTN_TK_CSRC", raising=False)
    assert "kernel sources" not in TKBackend().versions()
    monkeypatch.setenv("ATTN_TK_CSRC", str(tmp_path))
    assert TKBackend().versions()["kernel sources"] == str(tmp_path.resolve())


def test_trace_harness_parses_its_cases():
    """bench/tk_trace.py's case names: spec workloads, their ragged ids, and B,Hq,Hkv,P,S."""
    mod = _bench_module("tk_trace")
    w = mod._workload("chunkattn-mha")
    assert (w.batch, w.q_heads, w.kv_heads, w.ragged) == (32, 32, 32, False)
    assert mod._workload("tree-3level-ragged:chunk").ragged
    w = mod._workload("8,32,4,2048,256")
    assert (w.batch, w.q_heads, w.kv_heads, w.levels, w.suffix) == (8, 32, 4, ((1, 2048),), 256)
    assert mod._workload("4,8,8,0,64").levels == ()
    assert len(mod.ROLES) == mod.NWARPS and mod.ROLES[8:10] == ["producer", "query"]


def test_ncu_stall_ranking_reads_a_source_page(tmp_path, capsys):
    """bench/ncu_stalls.py: skips ncu's preamble, ranks instructions by stall samples, sums by opcode."""
    mod = _bench_module("ncu_stalls")
    page = tmp_path / "src.csv"
    page.write_text(
        "==PROF== Connected to process 1\n"
        '"Kernel Name","stacked_attn_kernel"\n'
        '"# Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)"\n'
        '"0x10","HGMMA.64x64x16.F32.BF16 R88, R164, gdesc[UR4], RZ","30","10"\n'
        '"0x20","@!P3  BRA 0x100","1,200","1,100"\n'
        '"0x30","MUFU.EX2 R1, R1","70",""\n'
        '"0x40","MUFU.EX2 R2, R2","",""\n')
    mod.main([str(page), "--top", "2"])
    out = capsys.readouterr().out
    assert "4 instructions, 1300 samples" in out
    top, by_op = out.split("by opcode:")
    ranked = [line for line in top.splitlines() if "(not issued" in line]
    assert len(ranked) == 2 and "BRA 0x100" in ranked[0] and "MUFU.EX2 R1, R1" in ranked[1]
    assert ranked[0].split()[:2] == ["92.31", "%"] and "not issued     1100" in ranked[0]
    assert by_op.index("BRA") < by_op.index("MUFU") < by_op.index("HGMMA")
    assert " 92.31 %  BRA" in by_op and "  5.38 %  MUFU" in by_op


def test_timeline_report_of_a_synthetic_launch():
    """bench/tk_timeline.py: cycles to us from the clocks and timers, per-kind means, last CTA."""
    mod = _bench_module("tk_timeline")
    items = np.zeros((3, plan.ITEM_INTS), dtype=np.int32)
    items[0, [plan.F_FLAGS, plan.F_SRC, plan.F_NROWS, plan.F_TILE1]] = [0, 0, 512, 7]
    items[1:, plan.F_FLAGS], items[1:, plan.F_SRC], items[1:, plan.F_NROWS], items[1:, plan.F_TILE1] = 1, 1, 4, 1
    ctas = np.array([0, 2, 3], dtype=np.int32)
    tl = np.zeros((3, 2, mod.TL_FIELDS), dtype=np.uint64)
    # CTA 0 (0.5 ns per cycle): a 2 us row-split item, then a 1 us kv item; CTA 1 starts
    # 0.5 us later and runs a 1 us kv item. Fields: start, q ready, end (cycles), timer (ns),
    # k wait, v wait (cycles), tile loop start and end, epilogue start, stores issued (cycles).
    tl[0, :, :10] = [1000, 1200, 5000, 10_000, 400, 200, 1400, 4600, 4700, 4900]
    tl[1, :, :10] = [5000, 5000, 7000, 12_000, 1000, 0, 5200, 6000, 6000, 6800]
    tl[2, :, :10] = [300, 500, 2300, 10_500, 600, 200, 600, 2200, 2250, 2290]
    tl[0, :, mod.TL_QGATHER], tl[0, :, mod.TL_QISSUED] = 1100, 1160  # the query warp's, item 0 only
    out = mod.summarize(items, ctas, tl)
    assert "3 items on 2 CTAs; kernel (first item start to last end) 3.0 us; 0.500 ns per cycle" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("src")]
    assert rows[0] == ["src0", "rows", "512r", "7t", "1", "2.00", "0.10", "0.20", "0.10", "0.10", "1.60", "0.20",
                       "0.05", "0.10", "50.0%"]
    # setup: (5200 - 5000, 600 - 500) cycles, loop (800, 1600), tail (1000, 100), merge (0, 50),
    # stores (800, 40): means of 0.5 ns each
    assert rows[1] == ["src1", "kv", "4r", "1t", "2", "1.00", "0.05", "0.40", "0.05", "0.07", "0.60", "0.28",
                       "0.01", "0.21", "50.0%"]
    assert "CTA start (us after the first): median 0.25, max 0.50; end: min 1.5, median 2.2, max 3.0" in out
    assert "CTA 0 (ends last)" in out and out.count("  src") == 2
    # first units: item 0 (row-split, 200 cycles both warpgroups) and item 2 (kv, 200); later:
    # item 1 (kv, 0)
    assert ("query wait (us, mean over warpgroups): row-split first 0.10 (n 2); kv-split first 0.10 (n 2); "
            "kv-split later 0.00 (n 2)") in out
    assert "query warp, us after the consumer's start (starts gathering / has issued): row-split first +0.05 / +0.08" in out


def test_timeline_report_of_a_pair():
    """A pair's items have fields from one warpgroup each: the report means only those."""
    mod = _bench_module("tk_timeline")
    items = np.zeros((2, plan.ITEM_INTS), dtype=np.int32)
    items[:, plan.F_FLAGS] = [plan.FLAG_KV_SPLIT | plan.FLAG_PAIR, plan.FLAG_KV_SPLIT | plan.FLAG_PAIRED]
    items[:, plan.F_SRC], items[:, plan.F_NROWS], items[:, plan.F_TILE1] = 1, 4, 2
    ctas = np.array([0, 2], dtype=np.int32)
    tl = np.zeros((2, 2, mod.TL_FIELDS), dtype=np.uint64)  # the other warpgroup's fields stay 0
    tl[0, 0, :10] = [1000, 1200, 3000, 10_000, 100, 0, 1300, 2600, 2600, 2800]
    tl[1, 1, :10] = [1000, 1400, 5000, 10_000, 300, 0, 1500, 4600, 4600, 4800]
    out = mod.summarize(items, ctas, tl)
    assert "2 items on 1 CTAs" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("src")]
    # 1 ns per cycle (no second start on the CTA): durations 2.0 and 4.0 us, q waits 0.2 / 0.4
    assert rows == [["src1", "kv2", "4r", "2t", "2", "3.00", "0.30", "0.20", "0.00", "0.10", "2.20", "0.40",
                     "0.00", "0.20", "100.0%"]]
    assert "end: min 4.0, median 4.0, max 4.0" in out  # the pair ends with its longer item
    # both items of the CTA's first unit count as first, each with its own warpgroup's wait
    assert "query wait (us, mean over warpgroups): kv-split first 0.30 (n 2)" in out


def test_coresident_reads_triton_kernel_resources_and_needs_a_gpu(monkeypatch, capsys):
    """bench/tk_coresident.py: registers and shared memory of each compiled Triton variant, from
    either cache layout; without CUDA it refuses to time and says so."""
    from types import SimpleNamespace

    mod = _bench_module("tk_coresident")
    k1 = SimpleNamespace(n_regs=90, n_spills=0, metadata=SimpleNamespace(shared=73752, num_warps=4))
    k2 = SimpleNamespace(n_regs=163, n_spills=2, metadata=SimpleNamespace(shared=1024, num_warps=8))
    tuple_layout = SimpleNamespace(device_caches={0: ({"a": k1, "b": k2}, "target", "backend")})
    dict_layout = SimpleNamespace(device_caches={0: {"a": k2}})
    assert mod.kernel_resources(tuple_layout) == [
        {"n_regs": 90, "n_spills": 0, "shared": 73752, "num_warps": 4},
        {"n_regs": 163, "n_spills": 2, "shared": 1024, "num_warps": 8}]
    assert mod.kernel_resources(dict_layout) == [{"n_regs": 163, "n_spills": 2, "shared": 1024, "num_warps": 8}]
    assert mod.kernel_resources(SimpleNamespace()) == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mod.main(["--workloads", "gqa-8b"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


def test_plan_estimate_prices_the_backends_plans_with_unit_times(capsys):
    """bench/tk_plan_estimate.py: priced with the plan's own costs its CTA times are the plan's
    loads; other costs change the schedule only while they are set; the CLI prints every
    workload."""
    mod = _bench_module("tk_plan_estimate")
    from attn.tk_ext import schedule
    from attn.workloads import spec_workload

    items, ctas = mod.placed_plan(spec_workload("gqa-8b"))
    own = mod.cta_times(items, ctas, (plan.ITEM_OVERHEAD, plan.ROW_TILE_COST), (plan.ITEM_OVERHEAD, plan.KV_TILE_COST),
                        (plan.PAIR_OVERHEAD, plan.PAIR_TILE_COST))
    assert own.shape == (len(ctas) - 1,)
    np.testing.assert_allclose(own, schedule.planned_loads(items, ctas))
    before = (plan.ROW_TILE_COST, plan.ITEM_OVERHEAD)
    with mod.plan_costs((1.75, 1.04, 4.26, 1.07, 2.75)):
        other, other_ctas = mod.placed_plan(spec_workload("gqa-8b"))
        assert plan.ITEM_OVERHEAD == 4.26
    assert (plan.ROW_TILE_COST, plan.ITEM_OVERHEAD) == before
    assert not (np.array_equal(other, items) and np.array_equal(other_ctas, ctas))
    assert mod.main(["--rows", "5.47,1.034", "--kv", "2.52,0.618", "--pairs", "1.63,0.634"]) == 0
    out = capsys.readouterr().out
    assert out.count("largest / median CTA us") == 1
    assert all(w in out for w in ("chunkattn-mha", "hydragen-mqa", "gqa-8b-long", "tree-3level", "no-share"))


def test_timeline_fits_schedule_costs_and_checks_the_plans_loads():
    """bench/tk_timeline.py: unit times -> the plan's cost units; its copy of the plan's costs."""
    mod = _bench_module("tk_timeline")
    assert mod.plan_costs() == plan.DEFAULT_COSTS
    # rows: 1.0 us + 0.7 per tile (a row tile = 1.75 units: 0.4 us each); kv: 0.68 + 0.4 per
    # tile (1.7 + 1.0 units); pairs: 0.572 + 0.352 per tile (1.43 + 0.88).
    samples = [("rows", 10, 8.0), ("rows", 20, 15.0), ("kv", 4, 2.28), ("kv", 8, 3.88),
               ("pair", 2, 1.276), ("pair", 8, 3.388)]
    out = mod.fit_costs(samples)
    assert "rows: 2 units of 10-20 tiles: 1.00 us + 0.700 us per tile" in out
    assert "ATTN_TK_PLAN_COSTS=1.75,1.00,1.70,0.88,1.43" in out
    one = mod.fit_costs([("rows", 10, 8.0), ("rows", 20, 15.0), ("pair", 8, 3.0), ("pair", 8, 3.4)])
    assert "pair: 2 units, all of 8 tiles: 3.20 us each (no fit: one length)" in one
    assert "ATTN_TK_PLAN_COSTS=1.75,1.00,1.70,1.00,1.70" in one  # the plan's where not fitted
    assert mod.planned_cost("pair", 8) == plan.PAIR_OVERHEAD + 8 * plan.PAIR_TILE_COST
    assert mod.planned_cost("rows", 8) == plan.ITEM_OVERHEAD + 8 * plan.ROW_TILE_COST
    # The units of a scheduled table, and the report's line on the plan's CTA loads.
    items = np.zeros((4, plan.ITEM_INTS), dtype=np.int32)
    items[:, plan.F_FLAGS] = [0, plan.FLAG_KV_SPLIT | plan.FLAG_PAIR, plan.FLAG_KV_SPLIT | plan.FLAG_PAIRED,
                              plan.FLAG_KV_SPLIT]
    items[:, plan.F_TILE1] = [6, 2, 2, 3]
    assert mod.units(items) == [(0, 1, "rows", 6), (1, 3, "pair", 4), (3, 4, "kv", 3)]
    ctas = np.array([0, 1, 3, 4], dtype=np.int32)
    tl = np.zeros((4, 2, mod.TL_FIELDS), dtype=np.uint64)
    for i, (start, end) in enumerate([(0, 6000), (100, 2100), (100, 2600), (0, 1500)]):
        tl[i, :, :10] = [start, start, end, 10_000, 0, 0, start, end, end, end]
    got = []
    out = mod.summarize(items, ctas, tl, samples=got)
    assert [(c, t) for c, t, _ in got] == [("rows", 6), ("pair", 4), ("kv", 3)]
    assert got[1][2] == pytest.approx(2.5)  # 1 ns per cycle: the pair from 100 to 2600 cycles
    assert "plan's CTA loads against the CTAs' ends: correlation" in out
    assert "ending last CTA 0 12.2 units at 6.0 us" in out


def test_cache_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTN_CACHE_DIR", str(tmp_path))
    assert build.build_dir("abc") == tmp_path / "tk-abc"
    monkeypatch.delenv("ATTN_CACHE_DIR")
    assert build.build_dir("abc") == build.Path.home() / ".cache" / "attn" / "tk-abc"


def test_failed_build_reason_names_log(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "environment_reasons", lambda: [])
    monkeypatch.setattr(build, "_failure", None)
    assert build.unavailable_reasons() == []
    d = build.build_dir()
    d.mkdir(parents=True)
    (d / "FAILED").write_text(str(d / "build.log"))
    reasons = build.unavailable_reasons()
    assert len(reasons) == 1 and str(d / "build.log") in reasons[0]


def test_build_main_without_environment(monkeypatch, capsys):
    monkeypatch.setattr(build, "environment_reasons", lambda: ["no CUDA device (test)"])
    assert build.main([]) == 1
    assert "no CUDA device (test)" in capsys.readouterr().err


def test_build_args_flags(tmp_path):
    root = build.tk_root() or tmp_path
    args = build.build_args(root, tmp_path, "k")
    flags = " ".join(args["extra_cuda_cflags"])
    assert "arch=compute_90a,code=sm_90a" in flags and "-DKITTENS_HOPPER" in flags and "-std=c++20" in flags
    assert "-lcuda" in args["extra_ldflags"]
    assert str(root / "include") in args["extra_include_paths"]
    assert sorted(os.path.basename(s) for s in args["sources"]) == [
        "bindings.cpp", "chunk_attn.cu", "merge.cu", "shared_prefix.cu"]


def test_import_does_not_build():
    assert build._module is None or torch.cuda.is_available()


# ---- support and marshalling ----------------------------------------------------------

def test_not_supported_reasons():
    b = tkb.TKBackend()
    inp = make_inputs(W("", 2, 4, 2, ((1, 8),), 4, 96), torch.float32)
    reasons = " ".join(b.not_supported_reasons(shared_prefix_problem(*inp.args())))
    assert "dtype float32" in reasons and "head dim 96" in reasons
    lv = tuple((1, 8) for _ in range(6))
    inp = make_inputs(W("", 2, 4, 2, lv, 4, 64), torch.bfloat16)
    assert any("K/V sources" in r for r in b.not_supported_reasons(shared_prefix_problem(*inp.args())))
    inp = make_inputs(W("", 2, 34, 2, ((1, 8),), 4, 64), torch.bfloat16)
    assert any("Hq/Hkv = 17" in r for r in b.not_supported_reasons(shared_prefix_problem(*inp.args())))


def test_prep_kv_and_q():
    x = torch.randn(4, 8, 2, 64).to(torch.bfloat16)
    assert tkb.prep_kv(x) is x
    t = x.transpose(1, 2)
    assert tkb.prep_kv(t).is_contiguous() and torch.equal(tkb.prep_kv(t), t)
    flat = torch.randn(4 * 8 * 2 * 64 + 1).to(torch.bfloat16)
    mis = flat[1:].view(4, 8, 2, 64)  # contiguous, 2 bytes off alignment
    assert mis.data_ptr() % 16 != 0
    fixed = tkb.prep_kv(mis)
    assert fixed.data_ptr() % 16 == 0 and torch.equal(fixed, mis)
    q = torch.randn(3, 4, 64).to(torch.bfloat16)
    assert tkb.prep_q(q) is q
    qs = torch.randn(3, 4, 72).to(torch.bfloat16)[..., :64]  # row stride 72: a multiple of 8
    assert tkb.prep_q(qs) is qs
    qo = torch.randn(3, 4, 65).to(torch.bfloat16)[..., :64]
    assert tkb.prep_q(qo).is_contiguous() and torch.equal(tkb.prep_q(qo), qo)


# ---- the plans, executed by a float64 emulation of the kernel ---------------------------

def _emulate_items(items, nslot, rows_total, hq, r, d, keys_of, scale, covered):
    """Partial states of ``items``; ``keys_of(item, t)`` gives tile ``t``'s (k, v, valid).
    A covered plan's lses start as NaN, as the kernel finds them (no ``-inf`` fill): a
    (slot, row) that no item writes poisons the merge."""
    po = torch.zeros(nslot, rows_total, d, dtype=torch.float64)
    pl = torch.full((nslot, rows_total), float("nan") if covered else float("-inf"), dtype=torch.float64)
    written = set()
    owner = {}  # row -> item (a direct plan: exactly one item per row)
    for n_it, it in enumerate(items.tolist()):
        flags, _, _, h, seq0, nrows, row0, t0, t1 = it[:9]
        kv = flags & plan.FLAG_KV_SPLIT
        paired = flags & (plan.FLAG_PAIR | plan.FLAG_PAIRED)
        slot = it[plan.F_SLOT]
        ntiles = keys_of(it, None)
        for w in range(plan.NWG):
            if paired:  # one warpgroup, every tile, one slot
                if w:
                    continue
                rows, tiles, sl = range(row0, min(row0 + plan.TILE, nrows)), range(ntiles), slot
            elif kv:
                rows, tiles, sl = range(row0, min(row0 + plan.TILE, nrows)), range(w, ntiles, plan.NWG), slot + w
            else:
                lo = row0 + w * plan.TILE
                rows, tiles, sl = range(lo, min(lo + plan.TILE, nrows)), range(ntiles), slot
            ks, vs = [], []
            for t in tiles:
                k, v, valid = keys_of(it, t)
                if valid > 0:
                    ks.append(k[:valid])
                    vs.append(v[:valid])
            for j in rows:
                b, hh = seq0 + j // r, h * r + j % r
                g = b * hq + hh
                assert (sl, g) not in written, "two items write one (slot, row)"
                written.add((sl, g))
                if it[plan.F_FLAGS] & plan.FLAG_DIRECT:
                    assert owner.setdefault(g, n_it) == n_it, "a direct plan with two items on one row"
                pl[sl, g] = float("-inf")  # an item with no keys writes -inf
                if flags & plan.FLAG_CLEAR_NEXT:
                    assert (sl + 1, g) not in written, "FLAG_CLEAR_NEXT on a (slot, row) an item writes"
                    written.add((sl + 1, g))
                    pl[sl + 1, g] = float("-inf")
                if ks:
                    s = torch.cat(ks) @ q_rows[b, hh] * scale
                    pl[sl, g] = torch.logsumexp(s, 0)
                    po[sl, g] = torch.softmax(s, 0) @ torch.cat(vs)
    return po, pl


def _run_level_emulation(p):
    global q_rows
    q_rows = p.q.double()
    levels = [(k.shape[0], k.shape[1]) for k in p.prefix_k]
    items, nslot = plan.level_plan(p.batch, p.num_q_heads, p.num_kv_heads, levels, p.suffix_capacity,
                                   p.suffix_lens is not None, num_sms=3)
    items, _ = plan.mark_direct(items, p.batch, p.num_kv_heads, p.num_q_heads // p.num_kv_heads)
    items, covered = plan.clear_unwritten(schedule.pair_kv_items(items, *tkb.pair_caps()), nslot, p.batch,
                                          p.num_kv_heads, p.num_q_heads // p.num_kv_heads)
    items, _ = schedule.assign_ctas(items, 3)
    srcs = list(zip(p.prefix_k, p.prefix_v))
    if p.suffix_capacity:
        srcs.append((p.suffix_k, p.suffix_v))
    keys_of = _level_keys(srcs, p.suffix_lens)
    b, hq, d = p.q.shape
    return _emulate_items(items, nslot, b * hq, hq, hq // p.num_kv_heads, d, keys_of, p.scale, covered)


def _level_keys(srcs, suffix_lens):
    """``keys_of`` of level-mode items: ``srcs`` the (k, v) of each source, ``[G, P, Hkv, D]``
    (``[B, S, Hkv, D]`` for the suffix; a one-group level may come as ``[P, Hkv, D]``)."""
    lens = suffix_lens.tolist() if suffix_lens is not None else None

    def keys_of(it, t):
        _, src, gidx, h = it[:4]
        kl = it[plan.F_KEYLEN] if it[plan.F_KEYLEN] >= 0 else lens[gidx]
        if t is None:
            return max(0, min(it[plan.F_TILE1], math.ceil(kl / plan.TILE)) - it[plan.F_TILE0])
        k, v = srcs[src]
        if k.dim() == 3:
            k, v = k[None], v[None]
        lo = (it[plan.F_TILE0] + t) * plan.TILE
        return k[gidx, lo:lo + plan.TILE, h].double(), v[gidx, lo:lo + plan.TILE, h].double(), kl - lo

    return keys_of


def _chunk_keys(k_chunks, v_chunks, clist, chunk_lens):
    """``keys_of`` of chunk-mode items over the pool ``[N, Hkv, C, D]`` and the items' chunk list."""
    tpc = math.ceil(k_chunks.shape[2] / plan.TILE)
    lens = [int(x) for x in chunk_lens]

    def keys_of(it, tt):
        if tt is None:
            return it[plan.F_TILE1] - it[plan.F_TILE0]
        g = it[plan.F_TILE0] + tt
        c = int(clist[it[plan.F_GIDX] + g // tpc])
        lo = (g % tpc) * plan.TILE
        h = it[plan.F_HEAD]
        return k_chunks[c, h, lo:lo + plan.TILE].double(), v_chunks[c, h, lo:lo + plan.TILE].double(), lens[c] - lo

    return keys_of


def _run_chunk_emulation(p):
    global q_rows
    q_rows = p.q.double()
    t = p.table
    items, clist, nslot = plan.chunk_plan(t.host, t.num_seqs, p.num_q_heads, p.num_kv_heads, p.chunk_size, num_sms=3)
    items, _ = plan.mark_direct(items, t.num_seqs, p.num_kv_heads, p.num_q_heads // p.num_kv_heads)
    items, covered = plan.clear_unwritten(schedule.pair_kv_items(items, *tkb.pair_caps()), nslot, t.num_seqs,
                                          p.num_kv_heads, p.num_q_heads // p.num_kv_heads)
    items, _ = schedule.assign_ctas(items, 3)
    keys_of = _chunk_keys(p.k_chunks, p.v_chunks, clist, t.host["chunk_lens"])
    n, hq, d = p.q.shape
    return _emulate_items(items, nslot, n * hq, hq, hq // p.num_kv_heads, d, keys_of, p.scale, covered)


PLAN_CASES = [c for c in CASES if not c.gpu_only] + [
    # Forces row-split blocks (> 64 stacked rows), a partial last block, and split-K.
    pytest.param(type(CASES[0])("rows200-split", "shared_prefix",
                                lambda dt, dev: make_inputs(W("", 50, 8, 2, ((1, 700), (5, 130)), 150, 64, ragged=True),
                                                            dt, dev, seed=3))),
    pytest.param(type(CASES[0])("chunk128-rows", "chunk",
                                lambda dt, dev: to_chunk_form(make_inputs(W("", 40, 8, 2, ((1, 600), (4, 200)), 90, 64,
                                                                            ragged=True), dt, dev, seed=4), 128, shuffle=True))),
]


class EmulatedExt:
    """The extension's entry points on the CPU: each launch's items emulated in float64
    (:func:`_emulate_items`), so that the backend's own marshalling (argument order, the
    item table and CTA heads it passes, the buffers it allocates, the merge it calls) runs
    end to end without a GPU. Launch arguments are checked as the bindings check them."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def _check_launch(q, items, ctas, po, pl, out, lse, heads):
        b, hq, d = q.shape
        assert q.is_contiguous() and items.dtype == torch.int32 and items.shape[1] == plan.ITEM_INTS
        assert ctas.dtype == torch.int32 and ctas.dim() == 1 and int(ctas[-1]) == items.shape[0]
        assert heads.numel() == 0 or tuple(heads.shape) == (ctas.numel() - 1, schedule.HEAD_INTS)
        assert out.shape == (b * hq, d) and out.dtype == q.dtype and lse.shape == (b * hq,)
        assert lse.dtype == pl.dtype == torch.float32
        assert po.numel() == 0 or po.dtype == tkb.partial_dtype(q.dtype)  # none for a direct plan

    def _write(self, q, items, r, keys_of, scale, po, pl, out, lse):
        global q_rows
        q_rows = q.double()
        b, hq, d = q.shape
        items = items.numpy()
        direct = po.numel() == 0
        nslot = int(items[:, plan.F_SLOT].max()) + plan.NWG if direct else po.shape[0]
        covered = bool(torch.isnan(pl).all()) if not direct else False  # emulated_tk poisons what a covered plan leaves
        po64, pl64 = _emulate_items(items, nslot, b * hq, hq, r, d, keys_of, scale, covered)
        if direct:  # each row's one state is its result
            o, l = merge(po64, pl64)
            out.copy_(o)
            lse.copy_(l)
        else:
            po.copy_(po64)
            pl.copy_(pl64)

    def shared_prefix_partials(self, q, ks, vs, suffix_lens, items, ctas, scale, po, pl, out, lse, heads):
        self.calls.append("shared_prefix_partials")
        self._check_launch(q, items, ctas, po, pl, out, lse, heads)
        keys_of = _level_keys(list(zip(ks, vs)), suffix_lens)
        self._write(q, items, q.shape[1] // ks[0].shape[-2], keys_of, scale, po, pl, out, lse)

    def chunk_partials(self, q, k_chunks, v_chunks, clist, chunk_lens, items, ctas, scale, po, pl, out, lse, heads):
        self.calls.append("chunk_partials")
        self._check_launch(q, items, ctas, po, pl, out, lse, heads)
        keys_of = _chunk_keys(k_chunks, v_chunks, clist, chunk_lens.tolist())
        self._write(q, items, q.shape[1] // k_chunks.shape[1], keys_of, scale, po, pl, out, lse)

    def merge(self, po, pl, out, lse):
        self.calls.append("merge")
        assert po.shape[:2] == pl.shape and out.shape == po.shape[1:] and lse.shape == pl.shape[1:]
        o, l = merge(po, pl)
        out.copy_(o)
        lse.copy_(l)


@pytest.fixture
def emulated_tk(monkeypatch):
    """A TKBackend on 3 CTAs whose extension is :class:`EmulatedExt`, and whose buffers that a
    covered plan leaves to the items start as NaN (so a (slot, row) no item writes shows)."""
    tk = tkb.TKBackend()
    ext = EmulatedExt()
    monkeypatch.setattr(tk, "_ext", lambda: ext)
    monkeypatch.setattr(tk, "_num_sms", lambda device: 3)
    real = tkb.TKBackend._buffers

    def poisoned(nslot, direct, covered, shape, dtype, device):
        po, pl, out, lse = real(nslot, direct, covered, shape, dtype, device)
        for t in (out, lse) + ((po, pl) if covered and not tkb.lse_fill() else ()):
            t.fill_(float("nan"))
        return po, pl, out, lse

    monkeypatch.setattr(tkb.TKBackend, "_buffers", staticmethod(poisoned))
    return tk, ext


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", PLAN_CASES, ids=lambda c: c.id)
def test_backend_marshalling_runs_end_to_end_on_an_emulated_extension(case, dtype, emulated_tk):
    """The tk backend's ops on the CPU with the kernels emulated: the flash-attention
    criterion against the float64 oracle, as on the GPU, and the launches the backend makes
    (a merge unless the plan is direct)."""
    case = case.values[0] if isinstance(case, type(pytest.param(0))) else case
    tk, ext = emulated_tk
    p = case.problem(case.inputs(dtype, "cpu"))
    out, lse = (tk.run_shared_prefix if case.op == "shared_prefix" else tk.run_chunk)(p)
    verdict = Oracle(p).judge(out, lse)
    assert verdict.ok, verdict
    assert ext.calls[0] == ("shared_prefix_partials" if case.op == "shared_prefix" else "chunk_partials")
    assert ext.calls[1:] in ([], ["merge"])


@pytest.mark.parametrize("switch", ["ATTN_TK_PARTIALS=float32", "ATTN_TK_LSE_FILL=1", "ATTN_TK_HEADS=0"])
def test_backend_switches_on_an_emulated_extension(switch, emulated_tk, monkeypatch):
    """The call-time switches change what the backend hands to the launch (float32 partial
    outs, lses filled with -inf, no CTA heads) and the results stay right."""
    name, value = switch.split("=")
    tk, ext = emulated_tk
    seen = []
    real = ext._check_launch

    def check(q, items, ctas, po, pl, out, lse, heads):
        real(q, items, ctas, po, pl, out, lse, heads)
        seen.append((po.dtype, bool(torch.isneginf(pl).all()), heads.numel()))

    monkeypatch.setattr(ext, "_check_launch", check)
    for env in (None, value):  # the default first: the switch must change what the launch gets
        if env is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, env)
        for case in [c.values[0] for c in PLAN_CASES if isinstance(c, type(pytest.param(0)))]:  # rows200-split, chunk128-rows
            p = case.problem(case.inputs(torch.bfloat16, "cpu"))
            out, lse = (tk.run_shared_prefix if case.op == "shared_prefix" else tk.run_chunk)(p)
            verdict = Oracle(p).judge(out, lse)
            assert verdict.ok, (case.id, env, verdict)
    default, switched = seen[:2], seen[2:]
    assert len(switched) == 2
    field = {"ATTN_TK_PARTIALS": 0, "ATTN_TK_LSE_FILL": 1, "ATTN_TK_HEADS": 2}[name]
    want = {"ATTN_TK_PARTIALS": torch.float32, "ATTN_TK_LSE_FILL": True, "ATTN_TK_HEADS": 0}[name]
    assert all(s[field] == want for s in switched) and any(s[field] != want for s in default)


def test_backend_merge_states_on_an_emulated_extension(emulated_tk):
    tk, ext = emulated_tk
    from attn.problems import merge_problem

    outs, lses = torch.randn(3, 2, 5, 16), torch.randn(3, 2, 5)
    lses[1, 0, 2] = float("-inf")
    out, lse = tk.run_merge(merge_problem(outs, lses))
    want_out, want_lse = merge(outs.double(), lses.double())
    assert ext.calls == ["merge"] and out.shape == (2, 5, 16) and lse.shape == (2, 5)
    assert torch.allclose(out.double(), want_out, atol=1e-6) and torch.allclose(lse.double(), want_lse, atol=1e-6)


# Skewed tile costs (ATTN_TK_PLAN_COSTS) split rows200-split's prefix differently
# (test_skewed_costs_change_a_plan).
SKEWED_COSTS = (8.0, 0.5, 0.0)


def test_skewed_costs_change_a_plan(monkeypatch):
    def items():
        return plan.level_plan(50, 8, 2, [(1, 700), (5, 130)], 150, True, num_sms=3)[0]

    default = items()
    for name, value in zip(("ROW_TILE_COST", "KV_TILE_COST", "ITEM_OVERHEAD"), SKEWED_COSTS):
        monkeypatch.setattr(plan, name, value)
    assert items().shape[0] != default.shape[0]


@pytest.mark.parametrize("pairs", [None, "-1,-1", "0,-1", "1,-1"], ids=["pairs", "pairs-all", "no-pairs", "pairs-of-1-tile"])
@pytest.mark.parametrize("costs", [None, SKEWED_COSTS], ids=["costs-default", "costs-skewed"])
@pytest.mark.parametrize("case", PLAN_CASES, ids=lambda c: c.id)
def test_plan_emulation_matches_reference(case, costs, pairs, monkeypatch):
    """Every plan computes attention exactly, under the default tile costs and under others
    (ATTN_TK_PLAN_COSTS: they change the splits), with kv-split items paired or not."""
    if pairs:
        tiles, rows = pairs.split(",")
        monkeypatch.setenv("ATTN_TK_PAIR_TILES", tiles)
        monkeypatch.setenv("ATTN_TK_PAIR_ROWS", rows)
    if costs:
        for name, value in zip(("ROW_TILE_COST", "KV_TILE_COST", "ITEM_OVERHEAD"), costs):
            monkeypatch.setattr(plan, name, value)
    inp = case.inputs(torch.float64, "cpu")
    p = case.problem(inp)
    po, pl = (_run_level_emulation if case.op == "shared_prefix" else _run_chunk_emulation)(p)
    out, lse = merge(po, pl)
    ref_out, ref_lse = reference(p)
    b, hq = p.q.shape[:2]
    assert torch.allclose(out.view(b, hq, -1), ref_out, atol=1e-10, rtol=0)
    both = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse.view(b, hq)), both)
    assert torch.allclose(lse.view(b, hq)[~both], ref_lse[~both], atol=1e-10, rtol=0)


def test_pairs_are_adjacent_kv_items_of_equal_tiles_and_schedule_as_units(monkeypatch):
    items, _ = plan.level_plan(128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64, True, num_sms=132)
    paired = schedule.pair_kv_items(items, -1, -1)
    assert not (items[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)).any()  # input unmodified
    first = np.flatnonzero(paired[:, plan.F_FLAGS] & plan.FLAG_PAIR)
    assert len(first) > 0 and np.array_equal(np.flatnonzero(paired[:, plan.F_FLAGS] & plan.FLAG_PAIRED), first + 1)
    for i in first.tolist():
        a, b = paired[i], paired[i + 1]
        assert a[plan.F_FLAGS] & b[plan.F_FLAGS] & plan.FLAG_KV_SPLIT
        assert a[plan.F_TILE1] - a[plan.F_TILE0] == b[plan.F_TILE1] - b[plan.F_TILE0]
    rows = (paired[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT) == 0
    assert not (paired[rows, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)).any()
    # The schedule keeps each pair adjacent, in order, inside one CTA's range; a pair costs
    # its tiles plus one item's overhead.
    for mixed in (False, True):
        sched, offs = schedule.assign_ctas(paired, 132, mixed)
        assert sorted(map(tuple, sched.tolist())) == sorted(map(tuple, paired.tolist()))
        f = sched[:, plan.F_FLAGS]
        starts = np.flatnonzero(f & plan.FLAG_PAIR)
        assert np.array_equal(np.flatnonzero(f & plan.FLAG_PAIRED), starts + 1)
        cta = np.repeat(np.arange(len(offs) - 1), np.diff(offs))
        assert (cta[starts] == cta[starts + 1]).all()
    # Only short items with a cap; none with 0; one-tile items pair with each other only;
    # with a row cap of 16, tree-3level's 64-row level items stay alone.
    assert not (schedule.pair_kv_items(items, 0, -1)[:, plan.F_FLAGS] & plan.FLAG_PAIR).any()
    one = schedule.pair_kv_items(items, 1, -1)
    sel = (one[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)) != 0
    assert sel.any() and ((one[sel, plan.F_TILE1] - one[sel, plan.F_TILE0]) == 1).all()
    assert sel.sum() < ((paired[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)) != 0).sum()
    r16 = schedule.pair_kv_items(items, -1, 16)
    sel = (r16[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)) != 0
    rows64 = (items[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT).astype(bool) & (items[:, plan.F_NROWS] == 64)
    assert rows64.any() and not sel[rows64].any() and sel[~rows64].any()
    # By default: items of at most PAIR_MAX_TILES tiles (no-share's 32-tile items stay alone).
    assert np.array_equal(schedule.pair_kv_items(items), paired)
    ns, _ = plan.level_plan(64, 32, 8, [], 2048, False, num_sms=132)
    assert (ns[:, plan.F_TILE1] - ns[:, plan.F_TILE0] > schedule.PAIR_MAX_TILES).all()
    assert not (schedule.pair_kv_items(ns)[:, plan.F_FLAGS] & plan.FLAG_PAIR).any()
    assert (schedule.pair_kv_items(ns, -1)[:, plan.F_FLAGS] & plan.FLAG_PAIR).any()
    # A malformed table (a pair's second item missing) is refused, not run.
    bad = paired.copy()
    bad[first[0] + 1, plan.F_FLAGS] &= ~plan.FLAG_PAIRED
    with pytest.raises(ValueError, match="FLAG_PAIRED"):
        schedule.assign_ctas(bad, 132)
    two = schedule.pair_kv_items(plan.level_plan(2, 4, 4, [], 64, False, num_sms=132)[0])
    assert two.shape[0] == 8 and (two[::2, plan.F_FLAGS] & plan.FLAG_PAIR).all()
    _, offs = schedule.assign_ctas(two, 132)
    assert len(offs) - 1 == 4  # one CTA per pair, never one per item
    # Pair units cost PAIR_TILE_COST per tile + PAIR_OVERHEAD: on two CTAs, a pair of 4-tile
    # items (9.7 at the default, the lone items' costs; 8.47 at 0.88 and 1.43), lone items of
    # 4 and 2 tiles (5.7 + 3.7 = 9.4 on the other CTA): a lone 1-tile item then goes to the
    # CTA with less, the other one by default, the pair's at the cheaper pair costs.
    mix = plan.level_plan(5, 4, 4, [], 256, False, num_sms=132)[0][:5]  # items of 4 tiles
    mix = np.concatenate([schedule.pair_kv_items(mix[:2]), mix[2:]])
    mix[3, plan.F_TILE1], mix[4, plan.F_TILE1] = 2, 1

    def with_pair():
        sched, offs = schedule.assign_ctas(mix, 2, mixed=False)
        groups = [sched[offs[c]:offs[c + 1]] for c in range(2)]
        g = next(g for g in groups if (g[:, plan.F_FLAGS] & plan.FLAG_PAIR).any())
        return sorted(g[:, plan.F_TILE1].tolist())

    assert (plan.PAIR_TILE_COST, plan.PAIR_OVERHEAD) == (plan.KV_TILE_COST, plan.ITEM_OVERHEAD)
    assert with_pair() == [4, 4]
    monkeypatch.setattr(plan, "PAIR_TILE_COST", 0.88)
    monkeypatch.setattr(plan, "PAIR_OVERHEAD", 1.43)
    assert with_pair() == [1, 4, 4]


def test_cta_heads_copy_each_ctas_range_and_first_two_items():
    """schedule.cta_heads: what the launch puts in the kernel's parameters is each CTA's row
    range and its first two rows of the scheduled table (zeros where the CTA has one)."""
    items, _ = plan.level_plan(128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64, True, num_sms=132)
    sched, ctas = schedule.assign_ctas(schedule.pair_kv_items(items), 132)
    heads = schedule.cta_heads(sched, ctas)
    assert heads.dtype == np.int32 and heads.shape == (132, schedule.HEAD_INTS)
    n = plan.ITEM_INTS
    for c in range(132):
        a, b = int(ctas[c]), int(ctas[c + 1])
        assert heads[c, 0] == a and heads[c, 1] == b and np.array_equal(heads[c, 2:2 + n], sched[a])
        assert np.array_equal(heads[c, 2 + n:], sched[a + 1] if a + 1 < b else np.zeros(n, dtype=np.int32))
    # CTAs of one item each (8 lone items on 132 SMs): no second item.
    lone = plan.level_plan(2, 4, 4, [], 64, False, num_sms=132)[0]
    s1, c1 = schedule.assign_ctas(lone, 132)
    h1 = schedule.cta_heads(s1, c1)
    assert len(h1) == 8 and (h1[:, 2 + n:] == 0).all() and np.array_equal(h1[:, 2:2 + n], s1)
    assert schedule.cta_heads(sched[:0], np.zeros(1, dtype=np.int32)).shape == (0, schedule.HEAD_INTS)


def test_backend_plans_are_paired_scheduled_and_cached(monkeypatch):
    """level_items / chunk_items on the CPU (an SM count stood in): the plan's items, paired
    and scheduled, cached per shape and per environment (ATTN_TK_PAIR_TILES here)."""
    monkeypatch.delenv("ATTN_TK_PAIR_TILES", raising=False)
    tk = tkb.TKBackend()
    monkeypatch.setattr(tk, "_num_sms", lambda device: 3)
    inp = make_inputs(W("", 12, 8, 2, ((1, 300),), 130, 64, ragged=True), torch.float32, "cpu", seed=5)
    p = shared_prefix_problem(*inp.args())
    items, ctas, nslot, direct, covered = tk.level_items(p)[:5]
    levels = [(k.shape[0], k.shape[1]) for k in p.prefix_k]
    want, want_slots = plan.level_plan(12, 8, 2, levels, p.suffix_capacity, True, num_sms=3)
    assert nslot == want_slots and not direct and int(ctas[-1]) == len(want)
    got = items.numpy().copy()
    assert covered  # every (slot, row) written: no -inf fill
    got[:, plan.F_FLAGS] &= ~np.int32(plan.FLAG_PAIR | plan.FLAG_PAIRED | plan.FLAG_CLEAR_NEXT)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist()))
    assert (items[:, plan.F_FLAGS] & plan.FLAG_PAIR).any()
    assert tk.level_items(p)[0] is items  # cached
    heads = tk.level_items(p)[5]
    assert heads.device.type == "cpu" and heads.dtype == torch.int32
    assert np.array_equal(heads.numpy(), schedule.cta_heads(items.numpy(), ctas.numpy()))
    monkeypatch.setenv("ATTN_TK_PAIR_TILES", "0")
    alone = tk.level_items(p)[0]
    assert alone is not items and not (alone[:, plan.F_FLAGS] & plan.FLAG_PAIR).any()
    ch = to_chunk_form(inp, 64, shuffle=True)
    cp = chunk_problem(*ch.args())
    c_items, c_ctas, clist, c_slots, c_direct, c_covered = tk.chunk_items(cp)[:6]
    assert tk.chunk_items(cp)[0] is c_items and int(c_ctas[-1]) == c_items.shape[0] > 0
    assert not (c_items[:, plan.F_FLAGS] & plan.FLAG_PAIR).any()  # ATTN_TK_PAIR_TILES=0 still set
    monkeypatch.delenv("ATTN_TK_PAIR_TILES")
    assert (tk.chunk_items(cp)[0][:, plan.F_FLAGS] & plan.FLAG_PAIR).any()


def test_pair_caps_from_the_environment(monkeypatch):
    monkeypatch.delenv("ATTN_TK_PAIR_TILES", raising=False)
    monkeypatch.delenv("ATTN_TK_PAIR_ROWS", raising=False)
    assert tkb.pair_caps() == (schedule.PAIR_MAX_TILES, schedule.PAIR_MAX_ROWS)
    monkeypatch.setenv("ATTN_TK_PAIR_TILES", "0")
    monkeypatch.setenv("ATTN_TK_PAIR_ROWS", "-1")
    assert tkb.pair_caps() == (0, -1)
    assert "pairs of kv-split items (max tiles, rows)" in tkb.TKBackend().versions()
    for name in ("ATTN_TK_PAIR_TILES", "ATTN_TK_PAIR_ROWS"):
        for bad in ("-2", "many"):
            monkeypatch.setenv(name, bad)
            with pytest.raises(ValueError, match=name):
                tkb.pair_caps()
            monkeypatch.setenv(name, "4")


def test_clear_unwritten_covers_the_spec_plans_and_only_unwritten_slots():
    """Paired and row-split items of two-slot splits clear slot + 1 only where no item writes
    it; the spec workloads' level plans are then covered (no -inf fill); a chunk table whose
    sequences own different numbers of slots is not."""
    for batch, hq, hkv, levels, suffix in [(128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64),
                                           (256, 32, 8, [(1, 8192)], 256), (1024, 8, 1, [(1, 2048)], 256),
                                           (32, 32, 32, [(1, 2048)], 256), (64, 32, 8, [(1, 32768)], 256)]:
        items, nslot = plan.level_plan(batch, hq, hkv, levels, suffix, True, num_sms=132)
        paired = schedule.pair_kv_items(items)
        out, covered = plan.clear_unwritten(paired, nslot, batch, hkv, hq // hkv)
        assert covered and out is not paired
        clear = (out[:, plan.F_FLAGS] & plan.FLAG_CLEAR_NEXT) != 0
        alone_kv = ((out[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT) != 0) & ((out[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)) == 0)
        assert not (clear & alone_kv).any()  # a lone kv-split item writes slot + 1 itself
        flags = plan.FLAG_PAIR | plan.FLAG_PAIRED
        np.testing.assert_array_equal(out[:, 1:], paired[:, 1:])
        np.testing.assert_array_equal(out[:, 0] & ~plan.FLAG_CLEAR_NEXT, paired[:, 0])
        assert ((out[clear, 0] & flags) != 0).any()
        # Without pairs every kv-split item writes both slots: only row-split items of a
        # two-slot split (none here but beside kv blocks) may need the flag.
        unpaired, covered = plan.clear_unwritten(items, nslot, batch, hkv, hq // hkv)
        assert covered and not ((unpaired[:, plan.F_FLAGS] & plan.FLAG_CLEAR_NEXT) != 0)[
            (unpaired[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT) != 0].any()
    items, nslot = plan.level_plan(64, 32, 8, [], 2048, True, num_sms=132)  # no-share
    direct, is_direct = plan.mark_direct(items, 64, 8, 4)
    assert is_direct and plan.clear_unwritten(direct, nslot, 64, 8, 4) == (direct, False)  # no partials
    # A chunk cache tree: its sequences own different numbers of slots.
    case = next(c for c in CASES if c.id == "chunk-cache-tree")
    p = case.problem(case.inputs(torch.float32, "cpu"))
    t, r = p.table, p.num_q_heads // p.num_kv_heads
    items, _, nslot = plan.chunk_plan(t.host, t.num_seqs, p.num_q_heads, p.num_kv_heads, p.chunk_size, num_sms=3)
    assert not plan.clear_unwritten(schedule.pair_kv_items(items), nslot, t.num_seqs, p.num_kv_heads, r)[1]


def test_mark_direct_only_when_every_row_is_in_one_item():
    # no-share: one decode item per (sequence, kv head), no split-K
    items, _ = plan.level_plan(64, 32, 8, [], 2048, False, num_sms=132)
    marked, direct = plan.mark_direct(items, 64, 8, 4)
    assert direct and (marked[:, plan.F_FLAGS] & plan.FLAG_DIRECT).all()
    assert not (items[:, plan.F_FLAGS] & plan.FLAG_DIRECT).any()  # the input is not modified
    assert (marked[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT).all()
    # one level, no suffix, no split: row-split items, each row once
    rows, _ = plan.level_plan(64, 32, 8, [(1, 256)], 0, False, num_sms=132)
    assert not (rows[:, plan.F_FLAGS] & plan.FLAG_KV_SPLIT).any()
    assert plan.mark_direct(rows, 64, 8, 4)[1]
    # rows with two states: a split suffix, a shared prefix plus a suffix
    assert not plan.mark_direct(plan.level_plan(2, 32, 8, [], 8192, False, num_sms=132)[0], 2, 8, 4)[1]
    assert not plan.mark_direct(plan.level_plan(64, 32, 8, [(1, 2048)], 256, False, num_sms=132)[0], 64, 8, 4)[1]
    # a row in no item (it would never be written), and a 64-row kv-split item (too big to exchange)
    assert not plan.mark_direct(items[1:], 64, 8, 4)[1]
    big, _ = plan.level_plan(16, 32, 8, [(1, 256)], 0, False, num_sms=132)
    assert (big[:, plan.F_NROWS] == 64).all() and not plan.mark_direct(big, 16, 8, 4)[1]
    assert not plan.mark_direct(items[:0], 64, 8, 4)[1]


def test_level_plan_splits_long_prefix():
    items, nslot = plan.level_plan(256, 32, 8, [(1, 8192)], 256, False, num_sms=132)
    prefix = items[items[:, plan.F_SRC] == 0]
    assert len(set(prefix[:, plan.F_TILE0].tolist())) > 1  # split along the prefix
    assert (prefix[:, plan.F_FLAGS] == 0).all()            # 1024 stacked rows: row-split blocks
    suffix = items[items[:, plan.F_SRC] == 1]
    assert (suffix[:, plan.F_FLAGS] == 1).all()            # decode: kv-split, two slots per split
    n_pre, n_suf = len(set(prefix[:, plan.F_TILE0].tolist())), len(set(suffix[:, plan.F_TILE0].tolist()))
    assert nslot == n_pre + plan.SLOTS_PER_SPLIT * n_suf
    assert prefix[:, plan.F_SLOT].max() < n_pre <= suffix[:, plan.F_SLOT].min()


# ---- GPU: agreement, tk vs triton, CUDA graphs ------------------------------------------

@pytest.fixture(scope="module")
def tk():
    return require_backend("tk")


def _call(case_op, inp, backend):
    if case_op == "shared_prefix":
        return attn.shared_prefix_attention(*inp.args(), return_lse=True, backend=backend)
    return attn.chunk_attention(*inp.args(), return_lse=True, backend=backend)


GPU_CASES = [c for c in CASES] + [
    type(CASES[0])(f"spec-{w.name}{'-ragged' if rag else ''}-{form}",
                   "shared_prefix" if form == "level" else "chunk",
                   (lambda w, rag, form: (lambda dt, dev: (lambda inp: inp if form == "level" else to_chunk_form(inp, 64))(
                       make_inputs(w.with_(ragged=rag), dt, dev, seed=30))))(w, rag, form), True)
    for w in (W("chunkattn-mha", 32, 32, 32, ((1, 2048),), 256),
              W("hydragen-mqa", 256, 8, 1, ((1, 2048),), 256),
              W("gqa-8b", 32, 32, 8, ((1, 8192),), 256),
              W("gqa-8b-long", 4, 32, 8, ((1, 32768),), 256),
              W("tree-3level", 128, 32, 8, ((1, 2048), (8, 512), (32, 128)), 64),
              W("no-share", 16, 32, 8, (), 2048))
    for rag in (False, True) for form in ("level", "chunk")
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.id)
def test_gpu_agreement(tk, case, dtype):
    if dtype == torch.float16 and case.id.startswith("spec-") and "chunkattn" not in case.id:
        pytest.skip("fp16 checked on the small cases and chunkattn-mha (keeps the GPU run short)")
    inp = case.inputs(dtype, "cuda")
    p = case.problem(inp)
    if tk.not_supported_reasons(p):
        pytest.skip("; ".join(tk.not_supported_reasons(p)))
    out, lse = _call(case.op, inp, "tk")
    verdict = Oracle(p).judge(out, lse)
    assert verdict.ok, str(verdict)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c.id.startswith("spec-") and "ragged" in c.id], ids=lambda c: c.id)
def test_gpu_tk_vs_triton(tk, case):
    tr = attn.get_backend("triton")
    if tr.unavailable_reasons():
        pytest.skip("triton unavailable: " + "; ".join(tr.unavailable_reasons()))
    inp = case.inputs(torch.bfloat16, "cuda")
    p = case.problem(inp)
    oracle = Oracle(p)
    a_out, a_lse = _call(case.op, inp, "tk")
    b_out, b_lse = _call(case.op, inp, "triton")
    ja, jb = oracle.judge(a_out, a_lse), oracle.judge(b_out, b_lse)
    assert ja.ok and jb.ok, f"tk: {ja}; triton: {jb}"
    keep = ~oracle.empty.to(a_out.device)
    assert float((a_out.float() - b_out.float()).abs()[keep].max()) <= ja.out_bound + jb.out_bound
    assert float((a_lse - b_lse).abs()[keep].max()) <= ja.lse_bound + jb.lse_bound


@pytest.mark.gpu
@pytest.mark.parametrize("src", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("impl", ["v8", "v4"])
@pytest.mark.parametrize("d,k,n", [(128, 5, 7), (128, 17, 7), (64, 37, 7), (128, 40, 7), (128, 9, 1024), (64, 6, 1024)],
                         ids=["d128", "d128-k17", "d64-k37", "d128-k40", "d128-k9-4096rows", "d64-k6-4096rows"])
def test_gpu_merge_states(tk, impl, d, k, n, src, monkeypatch):
    """Both vector merges (ATTN_TK_MERGE: v8, several states of a row read side by side; v4,
    one at a time), over more than one 32-state chunk too, and the scalar one (an unaligned
    view). v8 sends rows of 12 or more states, and merges of at most 2048 rows, to its WIDE
    kernel (ATTN_TK_MERGE_WIDE, _WIDE_ROWS); the 4096-row cases take the narrow one. A third of
    the states have no keys, scattered, so that the compacted passes (ATTN_TK_MERGE_COMPACT)
    skip some and not others."""
    monkeypatch.setenv("ATTN_TK_MERGE", impl)
    g = torch.Generator(device="cpu").manual_seed(k)
    outs = torch.randn(k, n, 4, d, generator=g).to("cuda", src)
    lses = torch.randn(k, n, 4, generator=g) * 3
    lses[torch.rand(k, n, 4, generator=g) < 0.35] = float("-inf")
    lses[:, 0, 0] = float("-inf")  # a row no state attends
    lses[2, 1, :] = float("-inf")
    lses[:, 1, 1] = float("-inf")
    lses[k - 1, 1, 1] = 0.5  # a row whose one state is its last
    lses = lses.cuda()
    outs[torch.isneginf(lses)] = float("nan")  # a state without keys is never read
    if src == torch.bfloat16:
        out, lse = attn.merge_states(outs, lses, backend="tk")
    else:  # float32 partials (the ops' internal form; merge_states takes bf16 / fp16) -> bf16
        out = torch.empty(n, 4, d, dtype=torch.bfloat16, device="cuda")
        lse = torch.empty(n, 4, dtype=torch.float32, device="cuda")
        tk._ext().merge(outs.view(k, 4 * n, d), lses.view(k, 4 * n), out.view(4 * n, d), lse.view(4 * n))
    ref_out, ref_lse = merge(outs.double().nan_to_num(), lses.double())
    assert torch.isneginf(lse[0, 0]) and (out[0, 0] == 0).all()
    fin = torch.isfinite(ref_lse)
    assert torch.allclose(lse[fin].double(), ref_lse[fin], atol=1e-4)
    # plus the bf16 output's own rounding, half an ulp (2^-9 relative): with 4096 rows some
    # outputs exceed 4 in magnitude, where that alone is more than the absolute term
    assert torch.allclose(out.double()[fin], ref_out[fin], atol=2 * 2.0**-8, rtol=2.0**-9)
    assert torch.equal(out[1, 1], outs[k - 1, 1, 1].to(out.dtype))  # one state, weight 1
    if src != torch.bfloat16:
        return
    # A view that starts one element into its storage takes the scalar (unaligned) path.
    flat = torch.empty(outs.numel() + 1, dtype=outs.dtype, device="cuda")
    shifted = flat[1:].view_as(outs).copy_(outs)
    out2, lse2 = attn.merge_states(shifted, lses, backend="tk")
    assert torch.equal(lse2, lse) and torch.allclose(out2.float(), out.float(), atol=2.0**-8)


@pytest.mark.gpu
@pytest.mark.parametrize("heads", ["0", "past"], ids=["tables", "more-ctas-than-heads"])
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c.id in (
    "spec-tree-3level-ragged-level", "spec-tree-3level-ragged-chunk", "spec-gqa-8b-ragged-chunk")],
    ids=lambda c: c.id)
def test_gpu_cta_heads_or_tables_agree(tk, case, heads, monkeypatch):
    """The CTAs' first units read from the plan's tables (ATTN_TK_HEADS=0), and a grid of 200
    CTAs, of which those past HEAD_CTAS (160) read the tables, pass the oracle as the default
    (every CTA's head in the kernel's parameters) does."""
    if heads == "0":
        monkeypatch.setenv("ATTN_TK_HEADS", "0")
    else:
        monkeypatch.setattr(tk, "_num_sms", lambda device: 200)
        monkeypatch.setattr(tk, "_plans", {})  # the 200-CTA plans stay out of the shared cache
    inp = case.inputs(torch.bfloat16, "cuda")
    verdict = Oracle(case.problem(inp)).judge(*_call(case.op, inp, "tk"))
    assert verdict.ok, str(verdict)
    if heads == "past":  # the plan that ran: more CTAs than the parameters hold
        ctas = (tk.level_items if case.op == "shared_prefix" else tk.chunk_items)(case.problem(inp))[1]
        assert len(ctas) - 1 > 160


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c.id in (
    "spec-hydragen-mqa-ragged-level", "spec-tree-3level-chunk", "spec-gqa-8b-level")], ids=lambda c: c.id)
def test_gpu_float32_partials_agree(tk, case, monkeypatch):
    # Both partial dtypes pass the oracle, and they differ by no more than its bounds.
    inp = case.inputs(torch.bfloat16, "cuda")
    oracle = Oracle(case.problem(inp))
    half_out, half_lse = _call(case.op, inp, "tk")
    monkeypatch.setenv("ATTN_TK_PARTIALS", "float32")
    f32_out, f32_lse = _call(case.op, inp, "tk")
    jh, jf = oracle.judge(half_out, half_lse), oracle.judge(f32_out, f32_lse)
    assert jh.ok and jf.ok, f"half partials: {jh}; float32 partials: {jf}"
    keep = ~oracle.empty.to(half_out.device)
    assert float((half_out.float() - f32_out.float()).abs()[keep].max()) <= jh.out_bound + jf.out_bound


@pytest.mark.gpu
@pytest.mark.parametrize("pairs", ["0,-1", "1,-1", "-1,-1"], ids=["no-pairs", "pairs-of-1-tile", "pairs-all"])
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c.id in (
    "spec-hydragen-mqa-ragged-level", "spec-tree-3level-ragged-chunk", "spec-no-share-ragged-level",
    "spec-gqa-8b-chunk")], ids=lambda c: c.id)
def test_gpu_pairing_choices_agree(tk, case, pairs, monkeypatch):
    """kv-split items alone (both warpgroups over alternate tiles), paired only when of one
    tile, and all paired (64-row and 32-tile items too) pass the oracle as the default plans do."""
    tiles, rows = pairs.split(",")
    monkeypatch.setenv("ATTN_TK_PAIR_TILES", tiles)
    monkeypatch.setenv("ATTN_TK_PAIR_ROWS", rows)
    inp = case.inputs(torch.bfloat16, "cuda")
    verdict = Oracle(case.problem(inp)).judge(*_call(case.op, inp, "tk"))
    assert verdict.ok, str(verdict)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c.id in (
    "spec-tree-3level-ragged-level", "spec-gqa-8b-chunk", "spec-chunkattn-mha-ragged-level",
    "spec-hydragen-mqa-chunk")] + [c for c in CASES if c.id in ("chunk-cache-tree", "rows200-split")],
    ids=lambda c: c.id)
def test_gpu_items_write_every_partial_lse_of_a_covered_plan(tk, case, monkeypatch):
    """A covered plan (plan.clear_unwritten) gets its partial lses without the -inf fill: the
    kernel must write every one. The buffer is poisoned with NaN before the launch; none may
    be left, and the result still passes the oracle. An uncovered plan keeps the fill."""
    seen = []
    original = tkb.TKBackend._buffers

    def poisoned(nslot, direct, covered, shape, dtype, device):
        po, pl, out, lse = original(nslot, direct, covered, shape, dtype, device)
        if covered:
            pl.fill_(float("nan"))
        seen.append((covered, pl))
        return po, pl, out, lse

    monkeypatch.setattr(tkb.TKBackend, "_buffers", staticmethod(poisoned))
    inp = case.inputs(torch.bfloat16, "cuda")
    verdict = Oracle(case.problem(inp)).judge(*_call(case.op, inp, "tk"))
    assert verdict.ok, str(verdict)
    (covered, pl), = seen
    assert covered == (case.id != "chunk-cache-tree")
    assert pl.numel() > 0 and not torch.isnan(pl).any()


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c.id in (
    "spec-tree-3level-ragged-level", "spec-tree-3level-chunk")], ids=lambda c: c.id)
def test_gpu_rebalanced_schedule_agrees(tk, case, monkeypatch):
    """ATTN_TK_REBALANCE=1 (another assignment of the same items to CTAs) passes the oracle."""
    monkeypatch.setenv("ATTN_TK_REBALANCE", "1")
    inp = case.inputs(torch.bfloat16, "cuda")
    verdict = Oracle(case.problem(inp)).judge(*_call(case.op, inp, "tk"))
    assert verdict.ok, str(verdict)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d,hq,hkv", [(128, 32, 8), (64, 16, 1), (128, 8, 8)], ids=["d128-r4", "d64-r16", "d128-r1"])
@pytest.mark.parametrize("op", ["shared_prefix", "chunk"])
@pytest.mark.parametrize("pairs", [True, False], ids=["pairs", "alone"])
def test_gpu_direct_plan(tk, op, d, hq, hkv, dtype, pairs, monkeypatch):
    """Nothing shared and no split: the items write the output themselves (paired kv-split
    items each on its warpgroup; alone, an item merges its warpgroups in shared memory).
    Ragged, with one empty sequence."""
    if not pairs:
        monkeypatch.setenv("ATTN_TK_PAIR_TILES", "0")
    w = W("", 6, hq, hkv, (), 300, d, ragged=True)
    inp = make_inputs(w, dtype, "cuda", seed=2)
    if op == "chunk":
        inp = to_chunk_form(inp, 64, shuffle=True)
        p = chunk_problem(*inp.args())
        assert tk.chunk_items(p)[4]
    else:
        inp.suffix_lens[1] = 0  # (a chunk table would give it no chunks: not direct)
        p = shared_prefix_problem(*inp.args())
        assert tk.level_items(p)[3]
    items = (tk.chunk_items(p) if op == "chunk" else tk.level_items(p))[0].cpu().numpy()
    assert bool((items[:, plan.F_FLAGS] & plan.FLAG_PAIR).any()) == pairs
    out, lse = _call(op, inp, "tk")
    verdict = Oracle(p).judge(out, lse)
    assert verdict.ok, str(verdict)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("op", ["shared_prefix", "chunk"])
def test_gpu_growing_scores_with_lazy_rescale(tk, op, dtype):
    """Row-split items keep a stale running max until a row's scores pass it by 2^8
    (tile_ops.cuh, RESCALE_LOG2): prefix keys scaled up along the prefix, plus a few outlier
    keys late in it, make some warps keep their max for many tiles and then rescale."""
    w = W("", 32, 8, 2, ((1, 2048),), 100, 128, ragged=True)  # 128 stacked rows per kv head
    inp = make_inputs(w, dtype, "cuda", seed=7)
    k = inp.prefix_k[0]
    ramp = torch.linspace(0.2, 4.0, k.shape[1], device=k.device).view(1, -1, 1, 1)
    k.copy_((k.float() * ramp).to(dtype))
    k[:, 1900] *= 6  # one late key whose score jumps far past the running max in many rows
    k[:, 700] *= 6
    if op == "chunk":
        inp = to_chunk_form(inp, 64, shuffle=True)
        p = chunk_problem(*inp.args())
    else:
        p = shared_prefix_problem(*inp.args())
    out, lse = _call(op, inp, "tk")
    verdict = Oracle(p).judge(out, lse)
    assert verdict.ok, str(verdict)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("chunk,d", [(128, 128), (192, 64)], ids=["c128-d128", "c192-d64"])
def test_gpu_chunks_of_several_tiles(tk, chunk, d, dtype):
    """Chunks longer than a 64-key tile: partial chunks leave tiles with no valid key, which
    every consumer schedule skips (row-split shared chunks, kv-split private ones)."""
    w = W("", 32, 16, 4, ((1, 300), (4, 70)), 90, d, ragged=True)
    inp = to_chunk_form(make_inputs(w, dtype, "cuda", seed=11), chunk, shuffle=True, seed=11)
    out, lse = _call("chunk", inp, "tk")
    verdict = Oracle(chunk_problem(*inp.args())).judge(out, lse)
    assert verdict.ok, str(verdict)


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["shared_prefix", "chunk", "merge", "direct"])
def test_gpu_cuda_graph_capture_and_replay(tk, op):
    # "direct": nothing shared, so the items write the output (no merge launch)
    w = W("", 8, 8, 2, ((1, 300), (2, 70)) if op != "direct" else (), 100, 128, ragged=True)
    inp = make_inputs(w, torch.bfloat16, "cuda", seed=1)
    if op == "direct":
        op = "shared_prefix"
        assert tk.level_items(shared_prefix_problem(*inp.args()))[3]
    if op == "chunk":
        inp = to_chunk_form(inp, 64, shuffle=True)
    if op == "merge":
        outs = torch.randn(3, 8, 8, 128, device="cuda").to(torch.bfloat16)
        lses = torch.randn(3, 8, 8, device="cuda")
        fn = lambda: attn.merge_states(outs, lses, backend="tk")  # noqa: E731
        q = outs
    else:
        fn = lambda: _call(op, inp, "tk")  # noqa: E731
        q = inp.q
    fn()  # eager first: builds and caches the item tables
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, g_lse = fn()
    q.copy_(torch.randn_like(q))  # new values in the captured buffer
    graph.replay()
    torch.cuda.synchronize()
    e_out, e_lse = fn()
    assert torch.equal(g_out, e_out) and torch.equal(g_lse, e_lse)


def test_schedule_assigns_every_item_once_and_balances():
    items, _ = plan.level_plan(128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64, True, num_sms=132)
    sched, offs = schedule.assign_ctas(items, 132)
    assert offs[0] == 0 and offs[-1] == len(items) and (np.diff(offs) >= 1).all()
    assert sorted(map(tuple, sched.tolist())) == sorted(map(tuple, items.tolist()))
    weight = np.where(sched[:, plan.F_FLAGS] & 1, plan.KV_TILE_COST, plan.ROW_TILE_COST)
    cost = (sched[:, plan.F_TILE1] - sched[:, plan.F_TILE0]) * weight + plan.ITEM_OVERHEAD
    loads = [cost[offs[c]:offs[c + 1]].sum() for c in range(len(offs) - 1)]
    assert max(loads) <= cost.sum() / len(loads) + cost.max()
    few, offs2 = schedule.assign_ctas(items[:5], 132)
    assert len(offs2) == 6  # never more CTAs than items
    empty, offs3 = schedule.assign_ctas(items[:0], 132)
    assert offs3.tolist() == [0]


def test_rebalanced_schedule_lowers_the_largest_load_and_keeps_units(monkeypatch):
    items, _ = plan.level_plan(128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64, False, num_sms=132)
    items = schedule.pair_kv_items(items)

    def loads(sched, offs):
        fl = sched[:, plan.F_FLAGS]
        paired = (fl & plan.FLAG_PAIRED) != 0
        w = np.where((fl & plan.FLAG_PAIR) | paired, plan.PAIR_TILE_COST,
                     np.where(fl & plan.FLAG_KV_SPLIT, plan.KV_TILE_COST, plan.ROW_TILE_COST))
        t = (sched[:, plan.F_TILE1] - sched[:, plan.F_TILE0]) * w
        over = np.where(fl & plan.FLAG_PAIR, plan.PAIR_OVERHEAD, plan.ITEM_OVERHEAD)
        c = t + np.where(paired, 0.0, over)
        return np.asarray([c[offs[k]:offs[k + 1]].sum() for k in range(len(offs) - 1)]), c

    lpt, o1 = schedule.assign_ctas(items, 132, mixed=False)
    reb, o2 = schedule.assign_ctas(items, 132, mixed=False, rebalance=True)
    l1, _ = loads(lpt, o1)
    l2, unit_cost = loads(reb, o2)
    assert sorted(map(tuple, reb.tolist())) == sorted(map(tuple, items.tolist()))
    assert l2.sum() == pytest.approx(l1.sum()) and l2.max() < l1.max() - 1.0  # tree: 6 % -> 2 % over the mean
    f = reb[:, plan.F_FLAGS]
    starts = np.flatnonzero(f & plan.FLAG_PAIR)
    cta = np.repeat(np.arange(len(o2) - 1), np.diff(o2))
    assert np.array_equal(np.flatnonzero(f & plan.FLAG_PAIRED), starts + 1) and (cta[starts] == cta[starts + 1]).all()
    for k in range(len(o2) - 1):  # each CTA's units longest first again
        c = unit_cost[o2[k]:o2[k + 1]][(f[o2[k]:o2[k + 1]] & plan.FLAG_PAIRED) == 0]
        assert (np.diff(c) <= 1e-9).all(), k
    # mixed: the second half's lists reversed, as without rebalancing
    mixed, o3 = schedule.assign_ctas(items, 132, mixed=True, rebalance=True)
    assert o3.tolist() == o2.tolist() and np.array_equal(mixed[o3[0]:o3[1]], reb[o2[0]:o2[1]])
    # a balanced table has nothing to move; the switch is read from the environment
    even, _ = plan.level_plan(4, 4, 4, [], 64, False, num_sms=132)
    assert np.array_equal(schedule.assign_ctas(even, 4, rebalance=True)[0], schedule.assign_ctas(even, 4)[0])
    monkeypatch.delenv("ATTN_TK_REBALANCE", raising=False)
    assert not tkb.rebalance()
    monkeypatch.setenv("ATTN_TK_REBALANCE", "1")
    assert tkb.rebalance() and "schedule" in tkb.TKBackend().versions()


def test_mixed_schedule_runs_half_of_the_ctas_shortest_first(monkeypatch):
    items, _ = plan.level_plan(32, 32, 8, [(1, 2048)], 512, False, num_sms=16)
    lpt, offs = schedule.assign_ctas(items, 16, mixed=False)
    mixed, offs_m = schedule.assign_ctas(items, 16, mixed=True)
    assert offs.tolist() == offs_m.tolist()  # the same assignment, only the order differs
    weight = np.where(lpt[:, plan.F_FLAGS] & 1, plan.KV_TILE_COST, plan.ROW_TILE_COST)
    for c in range(16):
        a, b = offs[c], offs[c + 1]
        cost = (lpt[a:b, plan.F_TILE1] - lpt[a:b, plan.F_TILE0]) * weight[a:b]
        assert (np.diff(cost) <= 0).all()  # LPT: each CTA longest first
        want = lpt[a:b] if c < 8 else lpt[a:b][::-1]
        assert np.array_equal(mixed[a:b], want), c
    # A CTA of the second half starts with a kv-split (decode) item while the first half's
    # start with row-split (prefix) items: both kinds of work run at once.
    assert not (mixed[offs[0], plan.F_FLAGS] & 1) and (mixed[offs[8], plan.F_FLAGS] & 1)
    monkeypatch.setenv("ATTN_TK_ORDER", "lpt")
    assert not tkb.mixed_order()
    monkeypatch.setenv("ATTN_TK_ORDER", "mixed")
    assert tkb.mixed_order()


def test_partial_dtype_is_the_ops_unless_float32_is_asked(monkeypatch):
    monkeypatch.delenv("ATTN_TK_PARTIALS", raising=False)
    assert tkb.partial_dtype(torch.bfloat16) == torch.bfloat16 and tkb.partial_dtype(torch.float16) == torch.float16
    monkeypatch.setenv("ATTN_TK_PARTIALS", "float32")
    assert tkb.partial_dtype(torch.bfloat16) == torch.float32


def _fake_build_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "environment_reasons", lambda: [])
    monkeypatch.setattr(build, "tk_root", lambda: tmp_path)
    monkeypatch.setattr(build, "_module", None)
    monkeypatch.setattr(build, "_failure", None)


def test_concurrent_builds_are_serialised(monkeypatch, tmp_path):
    import threading
    import time

    from torch.utils import cpp_extension

    _fake_build_env(monkeypatch, tmp_path)
    state = {"inside": 0, "most": 0, "calls": 0}
    guard = threading.Lock()

    def fake_load(**kw):
        with guard:
            state["inside"] += 1
            state["calls"] += 1
            state["most"] = max(state["most"], state["inside"])
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0a"
        time.sleep(0.2)
        with guard:
            state["inside"] -= 1
        return type("Mod", (), {"__file__": kw["name"]})()

    monkeypatch.setattr(cpp_extension, "load", fake_load)

    def worker():
        # Each thread stands for a process: its own module cache, its own open of the lock file.
        build._module = None
        build.load()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state["calls"] >= 1 and state["most"] == 1


def test_failed_build_writes_log_and_marker(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    _fake_build_env(monkeypatch, tmp_path)

    def broken(**kw):
        raise RuntimeError("nvcc: error: boom")

    monkeypatch.setattr(cpp_extension, "load", broken)
    with pytest.raises(build.TKBuildError, match="build.log"):
        build.load()
    d = build.build_dir()
    assert "boom" in (d / "build.log").read_text()
    assert (d / "FAILED").is_file()
    monkeypatch.setattr(build, "_failure", None)  # a fresh process still sees the failure
    assert any(str(d / "build.log") in r for r in build.unavailable_reasons())
    with pytest.raises(build.TKBuildError, match="failed to build earlier"):
        build.load()


def test_plan_costs_from_the_environment():
    """ATTN_TK_PLAN_COSTS (a tuning knob of bench/tk_variants.sh): parsed, or a clear error."""
    assert plan.costs_from_env(None) == plan.DEFAULT_COSTS
    assert plan.costs_from_env("") == plan.DEFAULT_COSTS
    assert plan.costs_from_env("1.2,0.5,0") == (1.2, 0.5, 0.0, 0.5, 0.0)  # pairs: the lone items' costs
    assert plan.costs_from_env("1.2,0.5,0,0.7,1") == (1.2, 0.5, 0.0, 0.7, 1.0)
    for bad in ("1,2", "a,b,c", "0,1,1", "1,-1,1", "1,1,-1", "1,nan,1", "1,1,1,0,1", "1,1,1,1,-1",
                "1,1,1,1", "1,1,1,1,1,1"):
        with pytest.raises(ValueError, match="ATTN_TK_PLAN_COSTS"):
            plan.costs_from_env(bad)


def test_split_factor_from_the_environment_changes_the_splits(monkeypatch):
    assert plan.split_factor_from_env(None) == 2.0 and plan.split_factor_from_env("3.5") == 3.5
    for bad in ("0", "-1", "x", "inf"):
        with pytest.raises(ValueError, match="ATTN_TK_SPLIT_FACTOR"):
            plan.split_factor_from_env(bad)
    base, base_slots = plan.level_plan(256, 32, 8, [(1, 8192)], 256, False, num_sms=132)
    monkeypatch.setattr(plan, "SPLIT_FACTOR", 4.0)
    finer, finer_slots = plan.level_plan(256, 32, 8, [(1, 8192)], 256, False, num_sms=132)
    assert finer.shape[0] > base.shape[0] and finer_slots > base_slots
    monkeypatch.setenv("ATTN_TK_SPLIT_FACTOR", "4")
    assert tkb.TKBackend().versions()["plan split factor (items per CTA share)"] == "4 (not chosen per plan)"


def test_backend_chooses_the_split_factor_per_shape(monkeypatch):
    """Of plan.AUTO_SPLIT_FACTORS the backend keeps, per shape, the plan with the smallest
    largest planned CTA load (within SPLIT_TOLERANCE, then the fewest slots): on 132 SMs
    tree-3level and gqa-8b plan one slot fewer than at the fixed factor 2, gqa-8b-long keeps
    2 (1.5 would leave 176 prefix items on 132 CTAs). ATTN_TK_SPLIT_FACTOR fixes it."""
    import types

    monkeypatch.delenv("ATTN_TK_SPLIT_FACTOR", raising=False)
    tk = tkb.TKBackend()
    monkeypatch.setattr(tk, "_num_sms", lambda device: 132)

    def shape(batch, hq, hkv, levels, suffix):
        return types.SimpleNamespace(batch=batch, num_q_heads=hq, num_kv_heads=hkv, suffix_capacity=suffix,
                                     prefix_k=[torch.empty(g, n, 1, 1) for g, n in levels], suffix_lens=None,
                                     device=torch.device("cpu"))

    for args, factor in [((128, 32, 8, [(1, 2048), (8, 512), (32, 128)], 64), 1.5),
                         ((256, 32, 8, [(1, 8192)], 256), 1.5), ((64, 32, 8, [(1, 32768)], 256), 2.0)]:
        items, ctas, nslot, direct, covered = tk.level_items(shape(*args))[:5]
        want, want_slots = plan.level_plan(*args, False, 132, factor)
        fixed = plan.level_plan(*args, False, 132, 2.0)[1]
        assert nslot == want_slots and items.shape[0] == want.shape[0] and covered
        assert (nslot < fixed) == (factor != 2.0)
        loads = schedule.planned_loads(items.numpy(), ctas.numpy())
        assert loads.sum() == pytest.approx(schedule.unit_costs(items.numpy())[2].sum())
    monkeypatch.setenv("ATTN_TK_SPLIT_FACTOR", "2")
    assert tkb.split_factors() == (plan.SPLIT_FACTOR,)


def test_switch_typos_are_refused_before_any_launch(monkeypatch):
    for name in tkb.SWITCH_VALUES:
        monkeypatch.delenv(name, raising=False)
    tkb.check_switches()
    for name, values in tkb.SWITCH_VALUES.items():
        for v in values:
            monkeypatch.setenv(name, v)
            tkb.check_switches()
        monkeypatch.setenv(name, values[0].upper() + "x")
        with pytest.raises(ValueError, match=name):
            tkb.check_switches()
        monkeypatch.delenv(name)
    monkeypatch.setenv("ATTN_TK_MERGE", "V4")
    tk = tkb.TKBackend()
    monkeypatch.setattr(tk, "_ext", lambda: pytest.fail("the extension was reached"))
    with pytest.raises(ValueError, match="ATTN_TK_MERGE"):
        tk.run_merge(None)


def test_info_names_tuning_switches(monkeypatch):
    for k in tkb.TUNING_SWITCHES:
        monkeypatch.delenv(k, raising=False)
    assert "tuning switches" not in tkb.TKBackend().versions()
    monkeypatch.setenv("ATTN_TK_MERGE", "v4")
    monkeypatch.setenv("ATTN_TK_LSE_FILL", "1")
    assert tkb.TKBackend().versions()["tuning switches"] == "ATTN_TK_LSE_FILL=1 ATTN_TK_MERGE=v4"
    assert tkb.lse_fill()


def test_info_names_tuned_plan_costs(monkeypatch):
    from attn.tk_ext.backend import TKBackend

    monkeypatch.delenv("ATTN_TK_PLAN_COSTS", raising=False)
    assert "plan costs (row, kv, item, pair tile, pair item)" not in TKBackend().versions()
    monkeypatch.setenv("ATTN_TK_PLAN_COSTS", "1.2,0.5,1")
    assert "plan costs (row, kv, item, pair tile, pair item)" in TKBackend().versions()


def test_ncu_stalls_sums_samples_by_reason():
    """bench/ncu_stalls.py by_reason: the stall_* columns summed, largest first, not-issued ones left out."""
    mod = _bench_module("ncu_stalls")
    fields = ["Source", "stall_no_inst", "stall_wait", "stall_long_sb", "stall_no_inst (Not Issued)"]
    rows = [{"Source": "A", "stall_no_inst": "30", "stall_wait": "5", "stall_long_sb": "", "stall_no_inst (Not Issued)": "99"},
            {"Source": "B", "stall_no_inst": "1,010", "stall_wait": "15", "stall_long_sb": "0", "stall_no_inst (Not Issued)": "9"}]
    out = mod.by_reason(fields, rows, 2000.0).splitlines()
    assert out == ["by stall reason:", " 52.00 %  stall_no_inst", "  1.00 %  stall_wait"]
