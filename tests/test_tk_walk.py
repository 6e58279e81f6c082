"""Leaf items that walk their sequences' suffixes (plan.walk_suffixes, ATTN_TK_WALK=1): which plans
walk, how a walked item is laid out, and that its results are exact (the float64 emulation of
tests/tk_emulation.py, which masks each suffix tile to its sequence's rows as the kernel does)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attn.problems import shared_prefix_problem
from attn.tk_ext import decode_streams, plan, schedule
from attn.workloads import Workload, make_inputs
from tk_emulation import PLAN_CASES, assert_states_match_reference, emulate_items, level_keys, run_level_emulation

TREE = [(1, 2048), (8, 512), (32, 128)]  # tree-3level's levels: 128 sequences, 32 leaves of 4


def _cases():
    out = []
    for c in PLAN_CASES:
        c = c.values[0] if isinstance(c, type(pytest.param(0))) else c
        if c.op == "shared_prefix" and not c.gpu_only:
            out.append(c)
    return out


@pytest.mark.parametrize("pairs", ["-1", "0"], ids=["pairs", "no-pairs"])
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.id)
def test_walked_plans_match_the_reference(case, pairs, monkeypatch):
    """Every shared-prefix plan built with ``walk=True`` computes attention exactly, its walked
    items paired or lone (each warpgroup of a lone one takes every other tile)."""
    monkeypatch.setenv("ATTN_TK_PAIR_TILES", pairs)
    p = case.problem(case.inputs(torch.float64, "cpu"))
    if case.id.startswith("tree-walk"):  # these walk (the others as walk_suffixes decides)
        levels = [(k.shape[0], k.shape[1]) for k in p.prefix_k]
        items, _ = plan.level_plan(p.batch, p.num_q_heads, p.num_kv_heads, levels, p.suffix_capacity,
                                   p.suffix_lens is not None, num_sms=3, walk=True)
        assert items[:, plan.F_WALK].any()
    assert_states_match_reference(p, *run_level_emulation(p, walk=True))


@pytest.mark.parametrize("ragged", [False, True], ids=["uniform", "ragged"])
def test_tree_3level_leaves_walk_their_suffixes_on_132_sms(ragged):
    """tree-3level: each of the 32 x 8 leaf items takes over its 4 sequences' one-tile suffixes
    (2 + 4 tiles), no suffix item is left, and every row has one partial state fewer."""
    walked, nslot = plan.level_plan(128, 32, 8, TREE, 64, ragged, 132, walk=True)
    plain, nslot0 = plan.level_plan(128, 32, 8, TREE, 64, ragged, 132)
    leaf = walked[:, plan.F_SRC] == 2
    assert (walked[:, plan.F_WALK] != 0).sum() == leaf.sum() == 32 * 8
    assert (walked[leaf, plan.F_WALK] == (3 | (plan.WALK_RAGGED if ragged else 0) | 64 << plan.WALK_CAP_SHIFT)).all()
    assert (walked[leaf, plan.F_TILE1] - walked[leaf, plan.F_TILE0] == 2 + 4).all()
    assert (walked[leaf, plan.F_FLAGS] & plan.FLAG_KV_SPLIT).all() and (walked[leaf, plan.F_NROWS] == 16).all()
    assert not (walked[:, plan.F_SRC] == 3).any() and (plain[:, plan.F_SRC] == 3).sum() == 128 * 8
    assert nslot == nslot0 - plan.SLOTS_PER_SPLIT
    # The other items are the plain plan's, slot for slot.
    assert np.array_equal(walked[~leaf], plain[plain[:, plan.F_SRC] < 2])
    # Scheduled, a walked item costs its tiles: a pair of them 2 x 6 tiles' time.
    starts, _, cost = schedule.unit_costs(schedule.pair_kv_items(walked))
    assert cost.max() >= 6 * plan.KV_TILE_COST


@pytest.mark.parametrize("shape", [
    (16, 8, 2, [(1, 200), (4, 64)], 64),     # a one-tile leaf: a lone item's warpgroup 1 would start on a suffix
    (64, 8, 2, [(1, 200), (2, 64 * 5)], 64),  # 32 sequences x 4 rows = 128: a row-split leaf
    (16, 8, 2, [(1, 200), (4, 130)], 0),     # no suffix
    (16, 8, 2, [], 130),                     # no level
    (16, 8, 2, [(1, 200), (4, 130)], 4096),  # suffixes that split
], ids=["one-tile-leaf", "row-split-leaf", "no-suffix", "no-level", "long-suffix"])
def test_plans_that_cannot_walk_are_the_plain_plans(shape):
    batch, hq, hkv, levels, suffix = shape
    walked = plan.level_plan(batch, hq, hkv, levels, suffix, True, 132, walk=True)
    plain = plan.level_plan(batch, hq, hkv, levels, suffix, True, 132)
    assert walked[1] == plain[1] and np.array_equal(walked[0], plain[0])
    assert not walked[0][:, plan.F_WALK].any()


def test_a_warpgroup_must_not_start_on_a_masked_suffix_tile(monkeypatch):
    """Why a walked leaf needs WALK_MIN_LEAF_TILES: with a one-tile leaf, warpgroup 1 of a lone
    item would meet a suffix tile (keys for one sequence's rows) first, and the kernel's online
    softmax has no finite max for the other rows then. The emulation refuses such a plan."""
    monkeypatch.setattr(plan, "WALK_MIN_LEAF_TILES", 1)
    inp = make_inputs(Workload("", 8, 8, 2, ((1, 64), (2, 64)), 64, 64), torch.float64, "cpu", seed=2)
    p = shared_prefix_problem(*inp.args())
    items, nslot = plan.level_plan(8, 8, 2, [(1, 64), (2, 64)], 64, False, 132, walk=True)
    assert items[:, plan.F_WALK].any()
    srcs = list(zip(p.prefix_k, p.prefix_v)) + [(p.suffix_k, p.suffix_v)]
    with pytest.raises(AssertionError, match="first tile"):
        emulate_items(p.q, items, nslot, 8 * 8, 8, 4, 64, level_keys(srcs, None), p.scale, False)


def test_the_decode_warpgroup_takes_no_walked_item():
    walked, _ = plan.level_plan(128, 32, 8, TREE, 64, False, 132, walk=True)
    solo = decode_streams.solo_candidates(walked)
    assert not solo[walked[:, plan.F_WALK] != 0].any()
    plain, _ = plan.level_plan(128, 32, 8, TREE, 64, False, 132)
    assert decode_streams.solo_candidates(plain)[plain[:, plan.F_SRC] == 3].all()  # suffix items could go
