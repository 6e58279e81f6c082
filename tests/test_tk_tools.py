"""The tk profiling tools under bench/ (tk_trace, ncu_stalls, tk_timeline, tk_coresident,
tk_plan_estimate), on synthetic inputs: what they parse, rank, fit and report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from attn.tk_ext import plan



def _bench_module(name: str):
    """bench/NAME.py imported as a module (bench/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _source_page(tmp_path, *lines: str) -> Path:
    """A synthetic Nsight Compute source page (CSV lines) for bench/ncu_stalls.py."""
    page = tmp_path / "src.csv"
    page.write_text("".join(line + "\n" for line in lines))
    return page


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
    page = _source_page(tmp_path, "==PROF== Connected to process 1", '"Kernel Name","stacked_attn_kernel"',
                        '"# Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)"',
                        '"0x10","HGMMA.64x64x16.F32.BF16 R88, R164, gdesc[UR4], RZ","30","10"',
                        '"0x20","@!P3  BRA 0x100","1,200","1,100"', '"0x30","MUFU.EX2 R1, R1","70",""',
                        '"0x40","MUFU.EX2 R2, R2","",""')
    mod.main([str(page), "--top", "2"])
    out = capsys.readouterr().out
    assert "4 instructions, 1300 samples" in out
    top, by_op = out.split("by opcode:")
    ranked = [line for line in top.splitlines() if "(not issued" in line]
    assert len(ranked) == 2 and "BRA 0x100" in ranked[0] and "MUFU.EX2 R1, R1" in ranked[1]
    assert ranked[0].split()[:2] == ["92.31", "%"] and "not issued     1100" in ranked[0]
    assert by_op.index("BRA") < by_op.index("MUFU") < by_op.index("HGMMA")
    assert " 92.31 %  BRA" in by_op and "  5.38 %  MUFU" in by_op


def test_ncu_stalls_summarises_a_region(tmp_path, capsys):
    """bench/ncu_stalls.py --region: the span from the first to the last matching instruction, apart."""
    mod = _bench_module("ncu_stalls")
    page = _source_page(tmp_path, '"# Address","Source","Warp Stall Sampling (All Samples)","stall_wait","stall_barrier"',
                        '"0x10","HGMMA.64x64x16.F32.BF16 R88, R164, gdesc[UR4], RZ","50","50","0"',
                        '"0x20","HGMMA.64x16x16.F32.BF16 R8, R9, gdesc[UR6], RZ","10","10","0"',
                        '"0x30","FMNMX R1, R2, R3, !PT","20","20","0"', '"0x40","BAR.SYNC 0x6, 0x80","20","0","20"',
                        '"0x50","MUFU.EX2 R2, R2","100","100","0"')
    mod.main([str(page), "--top", "1", "--region", r"HGMMA\.64x16x16|BAR\.SYNC 0x6"])
    out = capsys.readouterr().out
    head, region = out.split("region ")
    assert "5 instructions, 200 samples" in head
    assert "3 instructions (0x20 .. 0x40), 50 samples, 25.00 % of all" in region
    assert "MUFU" not in region and "HGMMA.64x64x16" not in region
    assert " 40.00 %  BAR" in region and " 60.00 %  stall_wait" in region and " 40.00 %  stall_barrier" in region
    mod.main([str(page), "--region", "NOPE"])
    assert "no instruction matches" in capsys.readouterr().out


def test_ncu_stalls_sums_samples_by_reason():
    """bench/ncu_stalls.py by_reason: the stall_* columns summed, largest first, not-issued ones left out."""
    mod = _bench_module("ncu_stalls")
    fields = ["Source", "stall_no_inst", "stall_wait", "stall_long_sb", "stall_no_inst (Not Issued)"]
    rows = [{"Source": "A", "stall_no_inst": "30", "stall_wait": "5", "stall_long_sb": "", "stall_no_inst (Not Issued)": "99"},
            {"Source": "B", "stall_no_inst": "1,010", "stall_wait": "15", "stall_long_sb": "0", "stall_no_inst (Not Issued)": "9"}]
    out = mod.by_reason(fields, rows, 2000.0).splitlines()
    assert out == ["by stall reason:", " 52.00 %  stall_no_inst", "  1.00 %  stall_wait"]


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


def test_timeline_report_of_a_decode_warpgroup_launch():
    """Two lists a CTA (ATTN_TK_DECODE_WG): a solo item has fields from warpgroup 0 only, the
    CTA ends with the later of its lists, and its planned load is the larger list's."""
    mod = _bench_module("tk_timeline")
    items = np.zeros((3, plan.ITEM_INTS), dtype=np.int32)
    items[0, [plan.F_FLAGS, plan.F_SRC, plan.F_NROWS, plan.F_TILE1]] = [0, 0, 512, 8]  # prefix list
    items[1:, plan.F_FLAGS] = plan.FLAG_KV_SPLIT | plan.FLAG_SOLO                       # decode list
    items[1:, plan.F_SRC], items[1:, plan.F_NROWS], items[1:, plan.F_TILE1] = 1, 4, 4
    ctas = np.array([0, 1, 3], dtype=np.int32)
    tl = np.zeros((3, 2, mod.TL_FIELDS), dtype=np.uint64)
    # 1 ns per cycle: the row-split item 1.0-5.0 us, the solo items 1.0-3.0 and 3.0-6.0 us
    tl[0, :, :10] = [1000, 1100, 5000, 10_000, 0, 0, 1100, 4900, 4900, 5000]
    tl[1, 0, :10] = [1000, 1200, 3000, 10_000, 0, 0, 1200, 2900, 2900, 3000]
    tl[2, 0, :10] = [3000, 3000, 6000, 12_000, 0, 0, 3000, 5900, 5900, 6000]
    samples = []
    out = mod.summarize(items, ctas, tl, samples=samples, two_lists=True)
    assert "3 items on 1 CTAs; kernel (first item start to last end) 5.0 us; 1.000 ns per cycle" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("src")]
    assert rows[0][:6] == ["src0", "rows", "512r", "8t", "1", "4.00"]
    assert rows[1][:6] == ["src1", "solo", "4r", "4t", "2", "2.50"]  # warpgroup 0's fields only
    assert "end: min 5.0, median 5.0, max 5.0" in out
    assert sorted(c for c, _, _ in samples) == ["rows", "solo", "solo"]
    tile, item = mod.solo_costs()
    solo_load = 2 * (item + 4 * tile)
    row_load = mod.planned_cost("rows", 8)
    assert f"CTA 0 {max(solo_load, row_load):.1f} units at 5.0 us" in out


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


def test_plan_estimate_prices_the_backends_plans_with_unit_times(capsys, monkeypatch):
    """bench/tk_plan_estimate.py: priced with the plan's own costs its CTA times are the plan's
    loads; other costs change the schedule only while they are set; the CLI prints every
    workload."""
    monkeypatch.setenv("ATTN_TK_DECODE_WG", "1")  # the tool prices one-list plans whatever the mode
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
