"""The two item lists a CTA of the decode-warpgroup kernels (attn/tk_ext/decode_streams.py): every
item once, solo items exactly in the decode lists, the planned loads, and where decode-heavy plans
put their decode items. (The backend's ops on such plans run end to end on the emulated extension
in tests/test_tk_backend.py.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attn.tk_ext import backend as tkb
from attn.tk_ext import decode_streams as ds
from attn.tk_ext import plan, schedule


def _spec_plan(batch, hq, hkv, levels, suffix):
    items, nslot = plan.level_plan(batch, hq, hkv, levels, suffix, False, num_sms=132, split_factor=2.0)
    return items, nslot


def _lists(offsets):
    o = offsets.tolist()
    return [(range(o[2 * c], o[2 * c + 1]), range(o[2 * c + 1], o[2 * c + 2])) for c in range(len(o) // 2)]


def test_streams_hold_every_item_once_and_the_solo_items_in_the_decode_lists():
    items, nslot = _spec_plan(256, 32, 8, [(1, 8192)], 256)  # gqa-8b
    out, offsets, load = ds.assign_streams(items, 132)
    assert offsets.dtype == np.int32 and len(offsets) == 2 * 132 + 1 and offsets[-1] == len(items)
    assert (np.diff(offsets) >= 0).all()
    strip = out.copy()
    strip[:, plan.F_FLAGS] &= ~plan.FLAG_SOLO
    assert sorted(map(tuple, strip.tolist())) == sorted(map(tuple, items.tolist()))  # a permutation
    solo = (out[:, plan.F_FLAGS] & plan.FLAG_SOLO) != 0
    for pre, dec in _lists(offsets):
        assert not solo[list(pre)].any() and solo[list(dec)].all()
    assert ds.solo_candidates(strip[solo]).all()
    assert solo.sum() > 0
    # The loads it planned are what planned_loads reads back from the lists.
    assert np.allclose(ds.planned_loads(out, offsets), load.max(axis=1))
    # Overlapping the two lists plans a shorter largest CTA than one list of pairs does.
    one = schedule.lpt_max_load(schedule.pair_kv_items(items), 132)
    assert load.max() < 0.85 * one
    # Solo items write one slot: clear_unwritten covers their slot + 1.
    _, covered = plan.clear_unwritten(out, nslot, 256, 8, 4)
    assert covered


def test_decode_heavy_plans_keep_some_decode_items_on_the_prefix_warpgroups():
    """hydragen-mqa: 1024 sequences' decode items against a 2048-key prefix. Solo items alone
    would leave the prefix warpgroups idle, so some stay lone kv-split items in prefix lists,
    and the largest CTA is no longer than with every candidate solo."""
    items, _ = _spec_plan(1024, 8, 1, [(1, 2048)], 256)
    out, offsets, load = ds.assign_streams(items, 132)
    solo = (out[:, plan.F_FLAGS] & plan.FLAG_SOLO) != 0
    cand = ds.solo_candidates(items)
    assert 0 < solo.sum() < cand.sum()
    free = ds.assign_streams(items, 132, solo=(0.0, 0.0))[0]  # free solo items: every candidate goes solo
    assert ((free[:, plan.F_FLAGS] & plan.FLAG_SOLO) != 0).sum() == cand.sum()
    costs = ds.solo_costs_from_env(None)
    forced = np.zeros(132)
    tiles = (items[cand, plan.F_TILE1] - items[cand, plan.F_TILE0]) * costs[0] + costs[1]
    for t in sorted(tiles, reverse=True):  # every candidate solo, LPT
        forced[np.argmin(forced)] += t
    prefix_only = ds.assign_streams(items[~cand], 132)[2][:, 0]
    assert load.max() <= max(forced.max(), prefix_only.max()) + 1e-9


def test_plans_without_candidates_or_ctas_to_spare():
    items, _ = _spec_plan(4, 8, 2, [(1, 4096)], 0)  # prefix only: no decode items
    out, offsets, load = ds.assign_streams(items, 132)
    assert not (out[:, plan.F_FLAGS] & plan.FLAG_SOLO).any() and (load[:, 1] == 0).all()
    empty = np.zeros((0, plan.ITEM_INTS), dtype=np.int32)
    out, offsets, load = ds.assign_streams(empty, 4)
    assert out.shape == (0, plan.ITEM_INTS) and offsets.tolist() == [0] * 9


def test_solo_costs_from_the_environment(monkeypatch):
    assert ds.solo_costs_from_env(None) == ds.SOLO_COSTS and ds.solo_costs_from_env("") == ds.SOLO_COSTS
    assert ds.solo_costs_from_env("2,0.5") == (2.0, 0.5)
    for bad in ("1", "1,2,3", "a,b", "-1,2", "inf,1"):
        with pytest.raises(ValueError, match="ATTN_TK_SOLO_COSTS"):
            ds.solo_costs_from_env(bad)
    items, _ = _spec_plan(256, 32, 8, [(1, 8192)], 256)
    monkeypatch.setenv("ATTN_TK_SOLO_COSTS", "100,100")  # solo items dearer than lone ones: none
    out, _, _ = ds.assign_streams(items, 132)
    assert not (out[:, plan.F_FLAGS] & plan.FLAG_SOLO).any()


def test_the_mode_selects_two_lists_and_auto_picks_them_where_they_were_measured_faster(monkeypatch):
    """ATTN_TK_DECODE_WG on the spec workloads' plans (132 SMs, the CPU): ``1`` gives gqa-8b two
    lists a CTA with solo items and no pairs among them; ``auto`` picks that form for gqa-8b
    only (H200 runs 0153 / 0154: it was 5.6-9.3 % faster there and slower or even elsewhere);
    a direct plan (no-share) never takes it; plans are cached per mode."""
    from attn.workloads import spec_workload

    for name in ("ATTN_TK_DECODE_WG", "ATTN_TK_SOLO_COSTS", "ATTN_TK_DWG_SLOWDOWN", "ATTN_TK_DWG_MARGIN"):
        monkeypatch.delenv(name, raising=False)
    key = tkb.TKBackend._schedule_key()
    monkeypatch.setenv("ATTN_TK_DECODE_WG", "1")
    assert tkb.TKBackend._schedule_key() != key
    tk = tkb.TKBackend()
    monkeypatch.setattr(tk, "_num_sms", lambda device: 132)

    def placed(w):
        return tk.placed_level_plan(w.batch, w.q_heads, w.kv_heads, w.levels, w.suffix, w.ragged, "cpu")

    items, ctas, direct, covered, nslot, _, dwg = placed(spec_workload("gqa-8b"))
    assert dwg and len(ctas) == 2 * 132 + 1 and not direct and covered
    assert (items[:, plan.F_FLAGS] & plan.FLAG_SOLO).any()
    assert not (items[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)).any()
    items, ctas, direct, _, _, _, dwg = placed(spec_workload("no-share"))
    assert direct and not dwg and len(ctas) == 132 + 1
    monkeypatch.setenv("ATTN_TK_DECODE_WG", "auto")
    picked = {n: placed(spec_workload(n))[-1] for n in
              ("gqa-8b", "hydragen-mqa", "tree-3level", "chunkattn-mha", "gqa-8b-long", "no-share")}
    assert picked == {"gqa-8b": True, "hydragen-mqa": False, "tree-3level": False, "chunkattn-mha": False,
                      "gqa-8b-long": False, "no-share": False}
    # Without the slowdown the prediction would take it for hydragen-mqa too (0.77 of one list).
    monkeypatch.setenv("ATTN_TK_DWG_SLOWDOWN", "1")
    assert placed(spec_workload("hydragen-mqa"))[-1]
    monkeypatch.delenv("ATTN_TK_DWG_SLOWDOWN")
    # gqa-8b's prediction is 0.91 of one list: a margin of 0.1 turns the form down, a margin of
    # 0 takes it, and each margin has its own cache key.
    key = tkb.TKBackend._schedule_key()
    monkeypatch.setenv("ATTN_TK_DWG_MARGIN", "0.1")
    assert tkb.TKBackend._schedule_key() != key and not placed(spec_workload("gqa-8b"))[-1]
    monkeypatch.setenv("ATTN_TK_DWG_MARGIN", "0")
    assert placed(spec_workload("gqa-8b"))[-1]


def test_auto_takes_the_decode_warpgroup_for_ragged_hydragen_chunks(monkeypatch):
    """hydragen-mqa-ragged's chunk plan (its table has each sequence's partial last chunk) is
    predicted 0.96 of one list: ``auto`` takes the decode warpgroup at the default margin (H200
    runs 0199 / 0200: 5.6 % faster), not at 0.05 (the margin until session 28); its
    shared-prefix plan (0.996) stays on one list."""
    from attn.cases import build_inputs
    from attn.workloads import spec_workload

    for name in ("ATTN_TK_DECODE_WG", "ATTN_TK_SOLO_COSTS", "ATTN_TK_DWG_SLOWDOWN", "ATTN_TK_DWG_MARGIN"):
        monkeypatch.delenv(name, raising=False)
    tk = tkb.TKBackend()
    monkeypatch.setattr(tk, "_num_sms", lambda device: 132)
    inputs = build_inputs(spec_workload("hydragen-mqa").with_(ragged=True), torch.float16, "cpu")
    chunk = inputs.problem("chunk")
    assert tk.chunk_items(chunk)[-2]
    assert not tk.level_items(inputs.problem("shared_prefix"))[-2]
    monkeypatch.setenv("ATTN_TK_DWG_MARGIN", "0.05")
    assert not tk.chunk_items(chunk)[-2]


def test_the_margin_switch_takes_one_fraction():
    assert ds.margin_from_env(None) == ds.margin_from_env("") == ds.DWG_MARGIN
    assert ds.margin_from_env("0.03") == 0.03 and ds.margin_from_env("0") == 0
    for bad in ("1", "-0.1", "0.1,0.2", "x", "nan"):
        with pytest.raises(ValueError, match="ATTN_TK_DWG_MARGIN"):
            ds.margin_from_env(bad)


def test_contended_loads_slow_only_the_prefix_lists_beside_a_decode_list():
    items, _ = _spec_plan(256, 32, 8, [(1, 8192)], 256)
    out, offsets, load = ds.assign_streams(items, 132)
    two = ds.list_loads(out, offsets)
    np.testing.assert_allclose(two, load)
    np.testing.assert_allclose(ds.planned_loads(out, offsets), load.max(axis=1))
    slow = ds.contended_loads(out, offsets, slowdown=1.5)
    want = np.maximum(np.where(load[:, 1] > 0, 1.5 * load[:, 0], load[:, 0]), load[:, 1])
    np.testing.assert_allclose(slow, want)
    assert ds.slowdown_from_env(None) == ds.DWG_SLOWDOWN and ds.slowdown_from_env("1.2") == 1.2
    for bad in ("0.9", "1,2", "x", "nan"):
        with pytest.raises(ValueError, match="ATTN_TK_DWG_SLOWDOWN"):
            ds.slowdown_from_env(bad)


def _scan_streams(items, num_ctas, solo):
    """assign_streams as a plain scan of every CTA per item (its first form, session 20): the
    oracle for the heaps that replaced it."""
    cand = ds.solo_candidates(items)
    rest = np.flatnonzero(~cand)
    starts, ends, cost = schedule.unit_costs(items[rest])
    lists = [[[], []] for _ in range(num_ctas)]
    load = np.zeros((num_ctas, 2))
    for u in np.argsort(-cost, kind="stable").tolist():
        c = int(np.argmin(load[:, 0]))
        lists[c][0].extend(rest[starts[u]:ends[u]].tolist())
        load[c, 0] += cost[u]
    dec = np.flatnonzero(cand)
    tiles = (items[dec, plan.F_TILE1] - items[dec, plan.F_TILE0]).astype(np.float64)
    as_solo, as_lone = tiles * solo[0] + solo[1], tiles * plan.KV_TILE_COST + plan.ITEM_OVERHEAD
    for k in np.argsort(-as_solo, kind="stable").tolist():
        end_s = np.maximum(load[:, 0], load[:, 1] + as_solo[k])
        end_p = np.maximum(load[:, 0] + as_lone[k], load[:, 1])
        cs, cp = int(np.lexsort((load[:, 1], end_s))[0]), int(np.lexsort((load[:, 0], end_p))[0])
        if end_s[cs] <= end_p[cp]:
            lists[cs][1].append(int(dec[k]))
            load[cs, 1] += as_solo[k]
        else:
            lists[cp][0].append(int(dec[k]))
            load[cp, 0] += as_lone[k]
    return [[sorted(p), sorted(d)] for p, d in lists], load


@pytest.mark.parametrize("shape", [(256, 32, 8, [(1, 8192)], 256), (128, 32, 32, [(1, 2048), (8, 512), (32, 128)], 64),
                                   (1024, 8, 1, [(1, 2048)], 256)], ids=["gqa-8b", "tree-3level", "hydragen-mqa"])
@pytest.mark.parametrize("ctas", [132, 7])
@pytest.mark.parametrize("solo", [(1.78, 3.83), (1.4, 2.0), (0.0, 0.0)])
def test_streams_place_every_item_where_a_scan_of_every_cta_would(shape, ctas, solo):
    items, _ = _spec_plan(*shape)
    out, offsets, load = ds.assign_streams(items, ctas, solo=solo)
    want, want_load = _scan_streams(items, ctas, solo)
    np.testing.assert_array_equal(load, want_load)
    rows = {tuple(r): i for i, r in enumerate(items.tolist())}
    assert len(rows) == len(items)  # an output row names its input row
    strip = out.copy()
    strip[:, plan.F_FLAGS] &= ~np.int32(plan.FLAG_SOLO)

    def rows_of(a, b):
        return sorted(rows[tuple(r)] for r in strip[a:b].tolist())

    o = offsets.tolist()
    assert [[rows_of(o[2 * c], o[2 * c + 1]), rows_of(o[2 * c + 1], o[2 * c + 2])] for c in range(ctas)] == want


@pytest.mark.parametrize("seed", range(6))
def test_runs_placed_in_bulk_match_the_heaps_step_by_step(seed, monkeypatch):
    """decode_streams._place_run (runs of at least BULK_RUN candidates of one cost) makes the
    heaps' choices in the heaps' order, loads bit-equal: on random subsets of spec plans, CTA
    counts and costs that tie often (whole and half numbers), against BULK_RUN = infinity."""
    rng = np.random.default_rng(seed)
    shapes = [(256, 32, 8, [(1, 8192)], 256), (128, 32, 32, [(1, 2048), (8, 512), (32, 128)], 64),
              (1024, 8, 1, [(1, 2048)], 256)]
    bulk, bulk_run = [], ds.BULK_RUN
    real = ds._place_run
    monkeypatch.setattr(ds, "_place_run", lambda *a: (bulk.append(len(a[0])), real(*a)))
    for _ in range(12):
        items, _ = _spec_plan(*shapes[rng.integers(len(shapes))])
        items = items[rng.random(len(items)) < rng.uniform(0.3, 1.0)]
        ctas = int(rng.choice([1, 3, 7, 64, 132, 250]))
        solo = tuple(float(x) for x in rng.choice([0.5, 1.0, 1.5, 1.78, 2.0, 3.83], 2))
        monkeypatch.setattr(plan, "KV_TILE_COST", float(rng.choice([0.5, 1.0, 2.0])))
        monkeypatch.setattr(plan, "ITEM_OVERHEAD", float(rng.choice([1.0, 1.7, 3.0])))
        got = ds.assign_streams(items, ctas, solo=solo)
        monkeypatch.setattr(ds, "BULK_RUN", 10 ** 9)
        want = ds.assign_streams(items, ctas, solo=solo)
        monkeypatch.setattr(ds, "BULK_RUN", bulk_run)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    assert bulk and max(bulk) >= bulk_run  # the bulk path ran


def test_auto_builds_each_split_once_for_both_forms(monkeypatch):
    """ATTN_TK_DECODE_WG=auto places every split factor in both forms from one make(factor):
    the host work of building a split is not done twice (its arrays are only copied after)."""
    monkeypatch.setenv("ATTN_TK_DECODE_WG", "auto")
    for name in ("ATTN_TK_SOLO_COSTS", "ATTN_TK_DWG_SLOWDOWN", "ATTN_TK_DWG_MARGIN", "ATTN_TK_SPLIT_FACTOR"):
        monkeypatch.delenv(name, raising=False)
    tk = tkb.TKBackend()
    monkeypatch.setattr(tk, "_num_sms", lambda device: 132)
    made = []
    real = plan.level_plan

    def counting(*a, **kw):
        made.append(a[-1])  # the split factor
        return real(*a, **kw)

    monkeypatch.setattr(plan, "level_plan", counting)
    _, _, _, _, _, _, dwg = tk.placed_level_plan(256, 32, 8, [(1, 8192)], 256, False, "cpu")
    assert dwg  # gqa-8b: both forms were placed, and the two-list one won
    assert len(made) > 1 and sorted(made) == sorted(set(made))
