"""The two item lists a CTA of ``ATTN_TK_DECODE_WG`` builds (attn/tk_ext/decode_streams.py): every
item once, solo items exactly in the decode lists, the planned loads, and where decode-heavy plans
put their decode items. (The backend's ops on such plans run end to end on the emulated extension
in tests/test_tk_backend.py.)"""
from __future__ import annotations

import numpy as np
import pytest

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


def test_one_list_is_two_lists_with_empty_decode_lists():
    assert ds.one_list(np.array([0, 3, 5, 5, 9])).tolist() == [0, 3, 3, 5, 5, 5, 5, 9, 9]
    items, _ = _spec_plan(8, 8, 2, [(1, 512)], 64)
    placed, ctas = schedule.assign_ctas(items, 5)
    two = ds.one_list(ctas)
    assert np.allclose(ds.planned_loads(placed, two, solo=(1.0, 1.0)), schedule.planned_loads(placed, ctas))


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


def test_the_build_flag_selects_two_lists_and_no_heads(monkeypatch):
    monkeypatch.delenv("ATTN_TK_NVCC_FLAGS", raising=False)
    assert not tkb.decode_wg()
    key = tkb.TKBackend._schedule_key()
    monkeypatch.setenv("ATTN_TK_NVCC_FLAGS", "-DATTN_TK_DECODE_WG=1")
    assert tkb.decode_wg() and tkb.TKBackend._schedule_key() != key  # plans are cached per mode
    tk = tkb.TKBackend()
    monkeypatch.setattr(tk, "_num_sms", lambda device: 132)
    items, ctas, direct, covered, nslot, _ = tk.placed_level_plan(256, 32, 8, [(1, 8192)], 256, False, "cpu")
    assert len(ctas) == 2 * 132 + 1 and not direct and covered
    assert (items[:, plan.F_FLAGS] & plan.FLAG_SOLO).any()
    assert not (items[:, plan.F_FLAGS] & (plan.FLAG_PAIR | plan.FLAG_PAIRED)).any()
    # A direct plan (no-share) keeps its pairs, in the two-list format with empty decode lists.
    items, ctas, direct, _, _, _ = tk.placed_level_plan(64, 32, 8, [], 1024, False, "cpu")
    assert direct and len(ctas) == 2 * 132 + 1 and not (items[:, plan.F_FLAGS] & plan.FLAG_SOLO).any()
    assert all(len(dec) == 0 for _, dec in _lists(ctas))
