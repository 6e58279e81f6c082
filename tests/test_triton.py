"""Triton-specific behaviour: forced split-K and row-tiling paths, support and availability
reasons, and (on a GPU) CUDA-graph capture and no host synchronisation.

On the CPU these run in Triton's interpreter: set ``TRITON_INTERPRET=1`` before pytest
imports triton; otherwise they skip with the backend's own reason.
"""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import attn
from attn.problems import chunk_problem, merge_problem, shared_prefix_problem
from attn.testing import Oracle
from attn.workloads import Workload, make_inputs, to_chunk_form
from cases import poison_past_lengths
from conftest import DEVICE, require_backend

W = Workload


@pytest.fixture
def triton_backend():
    return require_backend("triton")


def _config():
    from attn.triton import config
    return config


def _check_shared(w, dtype, seed=0, **force):
    inp = make_inputs(w, dtype, DEVICE, seed=seed)
    if inp.suffix_lens is not None:
        inp.suffix_lens[0] = 0  # an empty suffix next to full ones
    problem = shared_prefix_problem(*inp.args())
    with _config().forced(**force):
        out, lse = attn.shared_prefix_attention(*inp.args(), return_lse=True, backend="triton")
    verdict = Oracle(problem).judge(out, lse)
    assert verdict.ok, f"{w} {dtype} {force}: {verdict}"


def _check_chunk(w, c, dtype, seed=0, shuffle=True, **force):
    inp = to_chunk_form(make_inputs(w, dtype, DEVICE, seed=seed), c, shuffle=shuffle, seed=seed)
    problem = chunk_problem(*inp.args())
    with _config().forced(**force):
        out, lse = attn.chunk_attention(*inp.args(), return_lse=True, backend="triton")
    verdict = Oracle(problem).judge(out, lse)
    assert verdict.ok, f"{w} C={c} {dtype} shuffle={shuffle} {force}: {verdict}"
    return inp


DTYPES = [torch.float16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shared_prefix_split_k_paths(triton_backend, dtype):
    # Prefix and suffix cut into 32-key splits: several partial states per phase, merged by
    # the merge kernel (no one-split last phase to fold into).
    w = W("split", 4, 8, 2, ((1, 97), (2, 33)), 70, 64, ragged=True)
    _check_shared(w, dtype, prefix_split=32, suffix_split=32)
    # Split prefix, one-split suffix: the suffix phase folds the prefix states in.
    _check_shared(w.with_(head_dim=128), dtype, seed=1, prefix_split=32)
    # Lengths that are multiples of the key block: the unmasked path.
    _check_shared(W("even", 4, 8, 2, ((1, 128), (2, 64)), 64, 64), dtype, seed=2, prefix_split=64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shared_prefix_row_tiling(triton_backend, dtype):
    # 6 sequences x 8 heads = 48 stacked rows per kv head in tiles of 16 (the last one partial).
    _check_shared(W("tiles", 6, 8, 1, ((1, 40), (3, 9)), 5, 64), dtype, block_m=16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_leaf_level_with_the_suffixes(triton_backend, dtype):
    from attn.triton import shared_prefix
    # A tree whose leaves hold 2 sequences x 4 heads: the leaf level's programs walk their
    # sequences' suffixes too (one launch and one state fewer), ragged with an empty suffix.
    w = W("leaves", 6, 8, 2, ((1, 70), (3, 33)), 50, 64, ragged=True)
    inp = make_inputs(w, dtype, DEVICE)
    kinds = [st[0] for st in shared_prefix.plan(shared_prefix_problem(*inp.args()))]
    assert kinds == ["prefix", "leaf+suffix"], kinds
    _check_shared(w, dtype)
    _check_shared(w, dtype, seed=1, leaf_suffix=False)
    # Overlapped (a merge), in every launch order.
    _check_shared(w, dtype, seed=2, overlap=True)
    _check_shared(w, dtype, seed=3, overlap=True, launch_order=(1, 0))
    # Three overlapped launches (leaves and suffixes apart): started in config.launch_order.
    _check_shared(w, dtype, seed=8, overlap=True, leaf_suffix=False)
    # Not when a sequence's suffix spans 2**31 elements or more (the leaf loop's offsets are
    # 32-bit): a view whose key stride is that large (on the meta device: plan reads strides).
    p = shared_prefix_problem(*inp.args())
    b, s, hkv, d = p.suffix_k.shape
    wide = torch.empty_strided((b, s, hkv, d), (s * 2**31, 2**31 // s + 1, d, 1), device="meta")
    kinds = [st[0] for st in shared_prefix.plan(dataclasses.replace(p, suffix_k=wide))]
    assert kinds == ["prefix", "prefix", "suffix"], kinds
    # Groups of 6 sequences x 3 heads in 16-row tiles: the second tile starts inside sequence
    # 5, whose suffix both tiles walk for their own rows; uniform suffixes of 2 blocks.
    w3 = W("leaves3", 12, 6, 2, ((1, 40), (2, 20)), 40, 64)
    _check_shared(w3, dtype, seed=4, leaf_suffix=True, block_m=16)
    # The same with suffixes a multiple of the key block (32 here): the unmasked suffix loop.
    w4 = W("leaves3-even", 12, 6, 2, ((1, 40), (2, 20)), 64, 64)
    _check_shared(w4, dtype, seed=6, leaf_suffix=True, block_m=16)
    _check_shared(w4, dtype, seed=7, leaf_suffix=True, overlap=True)
    # One level only: fused only when forced.
    w1 = W("one", 4, 8, 2, ((2, 33),), 20, 64)
    kinds = [st[0] for st in shared_prefix.plan(shared_prefix_problem(*make_inputs(w1, dtype, DEVICE).args()))]
    assert kinds == ["prefix", "suffix"], kinds
    with _config().forced(leaf_suffix=True):
        kinds = [st[0] for st in shared_prefix.plan(shared_prefix_problem(*make_inputs(w1, dtype, DEVICE).args()))]
    assert kinds == ["leaf+suffix"], kinds
    _check_shared(w1, dtype, seed=5, leaf_suffix=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_chunk_split_and_tiling_paths(triton_backend, dtype):
    w = W("chunks", 6, 8, 2, ((1, 70), (2, 33)), 50, 64, ragged=True)
    # One shared chunk per work item, 16 stacked rows per tile (6 x 4 rows need 2 tiles),
    # one private chunk per sequence-first split (merged by the merge kernel).
    _check_chunk(w, 16, dtype, chunks_per_item=1, block_m=16, private_split=1)
    _check_chunk(w, 32, dtype, seed=1)
    # Every chunk full: the kernels take their unmasked path.
    _check_chunk(W("full", 4, 8, 2, ((1, 64), (2, 32)), 32, 64), 16, dtype, seed=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_chunk_first_tiles_sized_per_node(triton_backend, dtype):
    # A tree whose root stacks 6 x 4 = 24 rows and whose level-2 nodes 3 x 4 = 12: each node
    # group gets its own launch with tiles of its height (32 and 16 rows on the interpreter).
    w = W("tree", 6, 8, 2, ((1, 70), (2, 33)), 50, 64)
    inp = _check_chunk(w, 16, dtype, chunks_per_item=2, private_split=1)
    meta = next(iter(inp.table.host["triton"].values()))
    heights = [(tiles.block_m, count, row_tiles) for tiles, _, count, row_tiles, _, _ in meta["launches"]]
    # Root: 5 chunks (70 keys) in items of 2; level 2: 2 nodes x 3 chunks (33 keys) in items of 2.
    assert heights == [(32, 3, 1), (16, 4, 1)], heights
    assert meta["num_items"] == 7
    # A second call with the same overrides finds the plan cached (no host work); other
    # overrides build their own.
    with _config().forced(chunks_per_item=2, private_split=1):
        attn.chunk_attention(*inp.args(), backend="triton")
    cached = list(inp.table.host["triton"].values())
    assert len(cached) == 1 and cached[0] is meta
    with _config().forced(chunks_per_item=1, private_split=1):
        attn.chunk_attention(*inp.args(), backend="triton")
    assert len(inp.table.host["triton"]) == 2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_chunk_leaf_items_take_the_private_chunks(triton_backend, dtype):
    # A tree whose leaves hold 2 sequences x 4 heads: each leaf item also walks its sequences'
    # private chunks (partial chunks of 16, ragged, one sequence with none).
    w = W("leaves", 6, 8, 2, ((1, 70), (3, 33)), 50, 64, ragged=True)
    for seed, force in enumerate([{}, {"overlap": True}]):
        inp = _check_chunk(w, 16, dtype, seed=seed, **force)
    meta = next(iter(inp.table.host["triton"].values()))
    assert [m[5] for m in meta["launches"]] == [False, True]  # root launch, leaf launch
    assert meta["all_private_taken"] and not meta["num_private_left"].any()
    # Not taken when a leaf is cut into several items, or the sequence-first phase is split.
    inp = _check_chunk(w, 16, dtype, seed=5, chunks_per_item=1)
    assert not any(next(iter(inp.table.host["triton"].values()))["leaf"].tolist())
    inp = _check_chunk(w, 16, dtype, seed=6, private_split=1, overlap=True)
    meta = next(iter(inp.table.host["triton"].values()))
    assert not any(meta["leaf"].tolist())
    assert torch.equal(meta["num_private_left"], meta["num_private"]) and meta["num_private"].max() > 1
    # Leaves of 6 sequences x 3 heads in 16-row tiles (the second tile starts inside sequence 5),
    # chunks of 32 with 2 private slots per sequence, overlapped.
    w3 = W("leaves3", 12, 6, 2, ((1, 40), (2, 20)), 40, 64)
    inp = _check_chunk(w3, 32, dtype, seed=7, leaf_suffix=True, block_m=16, overlap=True)
    assert all(next(iter(inp.table.host["triton"].values()))["leaf"].tolist()[-2:])


def test_fold_of_many_items_per_sequence(triton_backend):
    # 13 + 3 one-chunk items per sequence: the fold takes them 8 at a time (two steps, the
    # second padded with -1 entries), in order and overlapped.
    from attn.triton.chunk import fold_unroll
    assert [fold_unroll(k) for k in (0, 1, 3, 8, 16)] == [1, 1, 4, 8, 8]
    w = W("many", 4, 4, 2, ((1, 200), (2, 40)), 20, 64)
    inp = _check_chunk(w, 16, torch.float16, chunks_per_item=1, private_split=1)
    _check_chunk(w, 16, torch.float16, seed=1, chunks_per_item=1, private_split=1, overlap=True)
    meta = next(iter(inp.table.host["triton"].values()))
    assert meta["most_items"] > 8 and meta["seq_rows"].shape[1] % 8 == 0


def _contig_flags(inp):
    meta = next(iter(inp.table.host["triton"].values()))
    return meta["shared_contig"], meta["private_contig"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_chunk_consecutive_ids_path(triton_backend, dtype):
    # A pool filled in order: every work item and every sequence's private chunks are runs of
    # consecutive ids, so both phases compute chunk ids instead of loading them.
    w = W("runs", 6, 8, 2, ((1, 70), (2, 33)), 50, 64, ragged=True)
    inp = _check_chunk(w, 16, dtype, shuffle=False, chunks_per_item=2, block_m=16, private_split=1)
    assert _contig_flags(inp) == (True, True)
    # Full chunks (unmasked), one split, C larger than the decode key block.
    inp = _check_chunk(W("runs-full", 4, 8, 2, ((1, 128), (2, 64)), 64, 64), 64, dtype, seed=1, shuffle=False,
                       decode_block_n=32)
    assert _contig_flags(inp) == (True, True)
    # The same in-order pool with the path switched off, and a shuffled pool: ids are loaded.
    inp = _check_chunk(w, 16, dtype, seed=2, shuffle=False, contiguous=False)
    assert _contig_flags(inp) == (False, False)
    inp = _check_chunk(w, 16, dtype, seed=3, shuffle=True)
    assert _contig_flags(inp) == (False, False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_overlapped_phases_then_merge(triton_backend, dtype):
    # The GPU's plan (phases on streams, then one merge / fold kernel) forced on any device;
    # the interpreter runs the launches in order, which checks the plan's arithmetic.
    w = W("overlap", 6, 8, 2, ((1, 70), (2, 33)), 50, 64, ragged=True)
    _check_shared(w, dtype, overlap=True)
    _check_shared(w, dtype, seed=1, overlap=True, prefix_split=32, suffix_split=32)
    _check_chunk(w, 16, dtype, seed=2, overlap=True)
    _check_chunk(w, 16, dtype, seed=3, shuffle=False, overlap=True, private_split=1, chunks_per_item=1)
    # And the in-order plan where the GPU would overlap.
    _check_shared(w, dtype, seed=4, overlap=False)
    _check_chunk(w, 32, dtype, seed=5, overlap=False)


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
def test_key_blocks_by_descriptor_or_pointers(triton_backend, tma):
    # Both ways of reading key blocks (the interpreter runs tensor descriptors too), fp16:
    # split-K with masked partial blocks, the fold, the leaf loop, overlapped launches; and
    # ragged suffixes whose keys and values past the lengths are NaN (a masked block's
    # descriptor load reads them: they must not reach the output).
    cfg = _config()
    w = W("tma", 6, 8, 2, ((1, 70), (3, 33)), 50, 64, ragged=True)
    for seed, force in enumerate(({}, dict(overlap=True), dict(leaf_suffix=False, prefix_split=32, suffix_split=32),
                                  dict(leaf_suffix=False, prefix_split=32), dict(leaf_suffix=False, overlap=True))):
        inp = make_inputs(w, torch.float16, DEVICE, seed=seed)
        inp.suffix_lens[0] = 0
        assert poison_past_lengths(inp, float("nan")) > 0
        problem = shared_prefix_problem(*inp.args())
        with cfg.forced(tma=tma, **force):
            out, lse = attn.shared_prefix_attention(*inp.args(), return_lse=True, backend="triton")
        verdict = Oracle(problem).judge(out, lse)
        assert verdict.ok, f"tma={tma} {force}: {verdict}"
    _check_shared(W("even", 4, 8, 2, ((1, 128), (2, 64)), 64, 128), torch.float16, seed=9, tma=tma, prefix_split=64)
    # chunk_attention: pools [chunks, Hkv, C, D] read as rows (chunk, head, key); partial
    # chunks with NaN past their lengths, chunks of 48 keys in blocks of 32 (a block reaches
    # into the next head's keys), both phases overlapped or in order, full chunks unmasked.
    for seed, (c, force) in enumerate(((16, {}), (48, dict(overlap=True, private_split=1, chunks_per_item=1)),
                                       (16, dict(overlap=True)))):
        inp = to_chunk_form(make_inputs(w, torch.float16, DEVICE, seed=seed), c, shuffle=True, seed=seed)
        assert poison_past_lengths(inp, float("nan")) > 0
        problem = chunk_problem(*inp.args())
        with cfg.forced(tma=tma, **force):
            out, lse = attn.chunk_attention(*inp.args(), return_lse=True, backend="triton")
        verdict = Oracle(problem).judge(out, lse)
        assert verdict.ok, f"tma={tma} C={c} {force}: {verdict}"
    _check_chunk(W("c", 6, 8, 2, ((1, 128), (2, 64)), 64, 64), 32, torch.float16, seed=4, tma=tma)
    # Which launches read by descriptor: every kind when forced, or the kinds named; by
    # default the prefix levels and an overlapped suffix that is the longer phase and needs
    # no key mask (not a tree's leaves, a suffix alone, nor ragged suffixes), on Hopper.
    hopper = DEVICE == "cuda" and not cfg.interpreting() and torch.cuda.get_device_capability()[0] >= 9
    for kind in ("prefix", "suffix", "leaf+suffix"):
        for overlap, critical, masked in itertools.product((False, True), repeat=3):
            want = kind == "prefix" or (kind == "suffix" and overlap and critical and not masked)
            assert cfg.wants_tma(kind, overlap, critical, masked) is want, (kind, overlap, critical, masked)
            assert cfg.use_tma(torch.device("cpu"), torch.float16, kind, overlap, critical, masked) is False
            if hopper:
                assert cfg.use_tma(torch.device(DEVICE), torch.bfloat16, kind, overlap, critical, masked) is want
    # The longer phase at the roofline: gqa-8b's 268 MB suffix outlasts its 34 GFLOP prefix,
    # gqa-8b-long's 67 MB suffix does not.
    assert cfg.suffix_critical(4 * 256 * 32 * 128 * 8192, 2 * 256 * 256 * 8 * 128 * 2)
    assert not cfg.suffix_critical(4 * 64 * 32 * 128 * 32768, 2 * 64 * 256 * 8 * 128 * 2)
    with cfg.forced(tma=("prefix",)):
        assert [cfg.use_tma(DEVICE, torch.float16, k) for k in ("prefix", "suffix", "leaf+suffix")] == \
            [True, False, False]
    with cfg.forced(tma=tma):
        assert cfg.use_tma(DEVICE, torch.bfloat16, "leaf+suffix") == tma
        assert not cfg.use_tma(DEVICE, torch.float32, "prefix")  # 16-bit inputs only


def test_descriptor_layouts():
    # A descriptor views [G, L, H, D] as rows g * L + p of H * D columns: only layouts where
    # that is one stride; the others keep pointers.
    from attn.triton.segment import tma_rows
    x = torch.zeros(3, 40, 2, 64, dtype=torch.float16)
    d = tma_rows(x, 32)
    assert d is not None and list(d.shape) == [120, 128] and list(d.strides) == [128, 1] and list(d.block_shape) == [32, 64]
    wide = torch.zeros(3, 40, 4, 64, dtype=torch.float16)[:, :, 1:3]  # padded rows: stride 256
    assert list(tma_rows(wide, 32).strides) == [256, 1]
    assert tma_rows(x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3), 32) is None  # heads outermost
    assert tma_rows(torch.zeros(3, 80, 2, 64, dtype=torch.float16)[:, ::2], 32) is not None  # step-2 keys: one stride
    assert tma_rows(torch.zeros(3, 40, 2, 128, dtype=torch.float16)[..., :64], 32) is None  # heads not packed
    assert tma_rows(torch.zeros(3, 40, 2, 65, dtype=torch.float16)[..., :64], 32) is None
    assert tma_rows(torch.zeros(1, 40, 2, 64, dtype=torch.float16)[:, :, :, :], 32) is not None
    assert tma_rows(torch.zeros(0, 40, 2, 64, dtype=torch.float16), 32) is None  # nothing to describe
    odd = torch.zeros(2 * 40 * 2 * 64 + 1, dtype=torch.float16)[1:].view(2, 40, 2, 64)
    assert tma_rows(odd, 32) is None  # base not 16-byte aligned


def test_partial_state_dtypes(triton_backend):
    # Partial outputs are stored in the input's half dtype between the phases (LSEs float32)
    # unless forced to float32: both through every path that writes or reads them (split-K
    # merge, fold, overlapped fold).
    w = W("half", 6, 8, 2, ((1, 70), (2, 33)), 50, 64, ragged=True)
    assert _config().partial_dtype(torch.float16) == torch.float16
    assert _config().partial_dtype(torch.bfloat16) == torch.bfloat16
    assert _config().partial_dtype(torch.float32) == torch.float32
    with _config().forced(half_partials=False):
        assert _config().partial_dtype(torch.float16) == torch.float32
    for half in (True, False):
        _check_shared(w, torch.float16, half_partials=half, prefix_split=32, suffix_split=32)
        _check_shared(w, torch.float16, seed=1, half_partials=half, prefix_split=32)
        _check_shared(w, torch.float16, seed=2, half_partials=half, overlap=True)
        _check_chunk(w, 16, torch.float16, seed=3, half_partials=half, overlap=True, private_split=1)
        _check_chunk(w, 16, torch.float16, seed=4, half_partials=half, chunks_per_item=1, private_split=1)


def test_register_cap_is_a_launch_option():
    cfg = _config()
    dev = torch.device("cpu")
    assert "maxnreg" not in cfg.shared_tiles(128, 128, torch.bfloat16, dev).launch_options()
    with cfg.forced(shared_maxnreg=168, decode_maxnreg=96):
        assert cfg.shared_tiles(128, 128, torch.bfloat16, dev).launch_options()["maxnreg"] == 168
        assert cfg.decode_tiles(4, 128, torch.bfloat16, dev).launch_options()["maxnreg"] == 96
    opts = cfg.decode_tiles(4, 128, torch.bfloat16, dev).launch_options()
    assert opts == {"num_warps": 4, "num_stages": 1}


def test_gqa_ratio_16_and_chunk_size_48(triton_backend):
    _check_shared(W("r16", 2, 32, 2, ((1, 20),), 3, 64), torch.float16)
    _check_chunk(W("c48", 3, 16, 1, ((1, 100),), 20, 64), 48, torch.float16)


@pytest.mark.parametrize("states", [1, 3, 11])
def test_merge_kernel_any_head_dim(triton_backend, states):
    outs = torch.randn(states, 5, 16, device=DEVICE)
    lses = torch.randn(states, 5, device=DEVICE)
    lses[:, 1] = float("-inf")  # a row with no keys in any state
    lses[0, 2] = float("-inf")  # a state with no keys among others
    out, lse = attn.merge_states(outs, lses, backend="triton")
    ref_out, ref_lse = attn.merge_states(outs, lses, backend="torch")
    assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(lse, ref_lse, atol=1e-5)
    assert torch.all(out[1] == 0) and lse[1] == float("-inf")


def test_launch_heuristics_fit_the_work():
    config = _config()
    t = config.Tiles(128, 64, 8, 3)
    # A program of one or two key blocks keeps no more stages than blocks; long ones keep 3.
    assert [config.fit_stages(t, b).num_stages for b in (0, 1, 2, 3, 40)] == [1, 1, 2, 3, 3]
    with config.forced(fit_stages=False):
        assert config.fit_stages(t, 1).num_stages == 3
    with config.forced(decode_stages=4):
        assert config.fit_stages(t, 1).num_stages == 3  # a forced stage count is left alone
    # Fold programs: 16 real rows where the kv heads divide so, one GQA group otherwise.
    assert [config.fold_kv_heads(hkv, r) for hkv, r in ((8, 4), (8, 1), (32, 1), (6, 4), (5, 4), (2, 16))] == \
        [4, 8, 16, 3, 1, 1]
    with config.forced(fold_kv_heads=1):
        assert config.fold_kv_heads(8, 4) == 1
    # Overlapped launches: the first, then the last (a tree's leaves), then the middle ones.
    assert [config.launch_order(n) for n in (1, 2, 3, 4)] == [[0], [0, 1], [0, 2, 1], [0, 3, 1, 2]]
    with config.forced(launch_order=(2, 0, 1)):
        assert config.launch_order(3) == [2, 0, 1]
        assert config.launch_order(2) == [0, 1]  # an order for another count is ignored


def test_not_supported_reasons():
    b = attn.get_backend("triton")
    q = torch.zeros(2, 4, 96)
    k = torch.zeros(8, 2, 96)
    reasons = b.not_supported_reasons(shared_prefix_problem(q, k, k))
    assert any("head dim 96" in r for r in reasons)
    q64 = torch.zeros(2, 4, 64, dtype=torch.float64)
    reasons = b.not_supported_reasons(shared_prefix_problem(q64, q64[0].unsqueeze(1), q64[0].unsqueeze(1)))
    assert any("dtype float64" in r for r in reasons)
    q32 = torch.zeros(1, 32, 64)
    k1 = torch.zeros(4, 1, 64)
    assert any("Hq/Hkv = 32" in r for r in b.not_supported_reasons(shared_prefix_problem(q32, k1, k1)))
    inp = to_chunk_form(make_inputs(W("c", 2, 2, 2, ((1, 300),), 1, 64), torch.float32), 256)
    assert any("chunk size 256" in r for r in b.not_supported_reasons(chunk_problem(*inp.args())))
    assert not any("head dim" in r for r in b.not_supported_reasons(
        merge_problem(torch.zeros(2, 3, 16), torch.zeros(2, 3))))


def test_availability_reason_names_the_interpreter(monkeypatch):
    b = attn.get_backend("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reasons = b.unavailable_reasons()
    assert reasons and "no CUDA device" in reasons[0] and "TRITON_INTERPRET=1" in reasons[0]
    assert "cpu" not in b.device_types
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert b.unavailable_reasons() == [] and "cpu" in b.device_types


def _gpu_inputs(dtype):
    w = W("graph", 16, 16, 4, ((1, 300), (4, 70)), 90, 128, ragged=True)
    inp = make_inputs(w, dtype, "cuda", seed=3)
    return inp, to_chunk_form(inp, 64, shuffle=True, seed=3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_graph_capture_and_replay(triton_backend, dtype):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    inp, cinp = _gpu_inputs(dtype)
    sp = lambda: attn.shared_prefix_attention(*inp.args(), return_lse=True, backend="triton")  # noqa: E731
    ck = lambda: attn.chunk_attention(*cinp.args(), return_lse=True, backend="triton")  # noqa: E731
    for fn in (sp, ck):
        fn()  # compile and build the table's work items outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_sp, g_ck = sp(), ck()
    torch.manual_seed(0)
    inp.q.copy_(torch.randn_like(inp.q))  # new queries, same buffers: replay must see them
    graph.replay()
    torch.cuda.synchronize()
    for (go, gl), fn in ((g_sp, sp), (g_ck, ck)):
        eo, el = fn()
        assert torch.equal(go, eo) and torch.equal(gl, el)


@pytest.mark.gpu
def test_no_host_synchronisation(triton_backend):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    inp, cinp = _gpu_inputs(torch.bfloat16)
    b = attn.get_backend("triton")
    problems = [shared_prefix_problem(*inp.args()), chunk_problem(*cinp.args())]
    for p in problems:
        b.run(p)  # warm-up: compile, cache the table's work items
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for p in problems:
            b.run(p)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_inputs(triton_backend, dtype):
    # Only the head dim must be unit-stride: q sliced from a wider tensor, a permuted prefix,
    # a permuted and a step-2 suffix.
    g = torch.Generator().manual_seed(5)
    rnd = lambda *s: torch.randn(*s, generator=g).to(dtype=dtype, device=DEVICE)  # noqa: E731
    b, hq, hkv, d, p, s = 4, 8, 2, 64, 70, 33
    q = rnd(b, hq, 2 * d)[:, :, :d]
    pk, pv = rnd(1, hkv, p, d).permute(0, 2, 1, 3), rnd(1, hkv, p, d).permute(0, 2, 1, 3)
    sk, sv = rnd(b, hkv, s, d).permute(0, 2, 1, 3), rnd(b, 2 * s, hkv, d)[:, ::2]
    lens = torch.tensor([0, 5, 33, 17], dtype=torch.int32, device=DEVICE)
    args = (q, [pk], [pv], sk, sv, lens)
    out, lse = attn.shared_prefix_attention(*args, return_lse=True, backend="triton")
    verdict = Oracle(shared_prefix_problem(*args)).judge(out, lse)
    assert verdict.ok, str(verdict)
    inp = to_chunk_form(make_inputs(W("c", 3, 8, 2, ((1, 40),), 20, 64), dtype, DEVICE), 16)
    args = (torch.cat([inp.q, inp.q], 2)[:, :, :64], inp.k_chunks, inp.v_chunks, inp.table)
    out, lse = attn.chunk_attention(*args, return_lse=True, backend="triton")
    verdict = Oracle(chunk_problem(*args)).judge(out, lse)
    assert verdict.ok and out.is_contiguous(), str(verdict)
