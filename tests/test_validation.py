"""Every malformed-input class raises ValueError/TypeError naming the argument, before any
backend runs (checked with a backend that records whether it was called)."""
from __future__ import annotations

import pytest
import torch

import attn
from attn import ChunkTable
from attn.backend import Backend
from attn.dispatch import register, backends


class Spy(Backend):
    name = "spy"
    device_types = frozenset({"cpu", "cuda"})
    calls = 0

    def run(self, problem):
        Spy.calls += 1
        raise AssertionError("a backend ran on malformed input")


@pytest.fixture(autouse=True)
def spy():
    backends()
    register(Spy())
    Spy.calls = 0
    yield
    from attn import dispatch
    dispatch._registry.pop("spy", None)
    assert Spy.calls == 0


def r(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


B, HQ, HKV, D, P, S = 4, 8, 2, 16, 5, 7
Q, PK, PV, SK, SV = r(B, HQ, D), r(P, HKV, D), r(P, HKV, D), r(B, S, HKV, D), r(B, S, HKV, D)


def sp(**kw):
    args = dict(q=Q, prefix_k=PK, prefix_v=PV, suffix_k=SK, suffix_v=SV, suffix_lens=None)
    args.update(kw)
    return attn.shared_prefix_attention(**args, backend="spy")


SHARED_PREFIX_BAD = [
    ("q-rank", dict(q=r(B, HQ)), ValueError, "q"),
    ("q-not-tensor", dict(q=[[1.0]]), TypeError, "q"),
    ("q-int", dict(q=torch.ones(B, HQ, D, dtype=torch.int32)), TypeError, "q"),
    ("prefix-rank", dict(prefix_k=r(1, P, HKV, D, 1)), ValueError, "prefix_k"),
    ("prefix-dim", dict(prefix_k=r(P, HKV, D + 1), prefix_v=r(P, HKV, D + 1)), ValueError, "head dim"),
    ("kv-shape-mismatch", dict(prefix_v=r(P + 1, HKV, D)), ValueError, "prefix_v"),
    ("hq-not-multiple", dict(prefix_k=r(P, 3, D), prefix_v=r(P, 3, D)), ValueError, "multiple"),
    ("dtype-mix", dict(prefix_k=r(P, HKV, D, dtype=torch.float16)), TypeError, "dtype"),
    ("suffix-dtype-mix", dict(suffix_v=r(B, S, HKV, D, dtype=torch.float64)), TypeError, "suffix_v"),
    ("suffix-batch", dict(suffix_k=r(B + 1, S, HKV, D), suffix_v=r(B + 1, S, HKV, D)), ValueError, "batch"),
    ("suffix-heads", dict(suffix_k=r(B, S, 1, D), suffix_v=r(B, S, 1, D)), ValueError, "kv heads"),
    ("suffix-only-k", dict(suffix_v=None), ValueError, "suffix_k and suffix_v"),
    ("lens-too-long", dict(suffix_lens=torch.tensor([1, 2, S + 1, 0], dtype=torch.int32)), ValueError, "suffix_lens"),
    ("lens-negative", dict(suffix_lens=torch.tensor([1, -1, 0, 0], dtype=torch.int32)), ValueError, "suffix_lens"),
    ("lens-float", dict(suffix_lens=torch.tensor([1.0, 2.0, 3.0, 4.0])), TypeError, "suffix_lens"),
    ("lens-shape", dict(suffix_lens=torch.tensor([1, 2], dtype=torch.int32)), ValueError, "suffix_lens"),
    ("lens-without-suffix", dict(suffix_k=None, suffix_v=None, suffix_lens=torch.zeros(B, dtype=torch.int32)), ValueError, "suffix_lens"),
    ("groups-not-dividing", dict(prefix_k=[r(3, P, HKV, D)], prefix_v=[r(3, P, HKV, D)]), ValueError, "groups"),
    ("level-count-mismatch", dict(prefix_k=[r(1, P, HKV, D)], prefix_v=[r(1, P, HKV, D), r(2, 1, HKV, D)]), ValueError, "levels"),
    ("level-heads-mismatch", dict(prefix_k=[r(1, P, HKV, D), r(2, 3, 1, D)], prefix_v=[r(1, P, HKV, D), r(2, 3, 1, D)]), ValueError, r"prefix_k\[1\] has 1 kv heads"),
    ("tensor-and-list", dict(prefix_v=[PV]), TypeError, "prefix_k and prefix_v"),
    ("head-dim-stride", dict(prefix_k=r(P, HKV, 2 * D)[..., ::2], prefix_v=r(P, HKV, D)), ValueError, "stride"),
    ("scale-string", dict(), TypeError, "scale"),
]


@pytest.mark.parametrize("name,kw,err,word", SHARED_PREFIX_BAD, ids=[c[0] for c in SHARED_PREFIX_BAD])
def test_shared_prefix_rejects(name, kw, err, word):
    with pytest.raises(err, match=word):
        if name == "scale-string":
            attn.shared_prefix_attention(Q, PK, PV, scale="x", backend="spy")
        else:
            sp(**kw)


def test_errors_name_what_they_got():
    with pytest.raises(ValueError) as e:
        sp(q=r(B, HQ))
    assert "[B, Hq, D]" in str(e.value) and str((B, HQ)) in str(e.value)


C, NC = 8, 6
KC, VC = r(NC, HKV, C, D), r(NC, HKV, C, D)
TABLE = ChunkTable.from_seq_chunks([[0, 1, 2], [0, 1, 3], [0, 4, -1]], [C, C, 3, 5, C, 1])


def ca(**kw):
    args = dict(q=r(3, HQ, D), k_chunks=KC, v_chunks=VC, table=TABLE)
    args.update(kw)
    return attn.chunk_attention(**args, backend="spy")


CHUNK_BAD = [
    ("q-rows", dict(q=r(4, HQ, D)), ValueError, "rows"),
    ("pool-rank", dict(k_chunks=r(NC, HKV, C * D), v_chunks=r(NC, HKV, C * D)), ValueError, "k_chunks"),
    ("pool-mismatch", dict(v_chunks=r(NC, HKV, C + 1, D)), ValueError, "one shape"),
    ("pool-dtype", dict(v_chunks=VC.half()), TypeError, "dtype"),
    ("table-type", dict(table=[[0, 1]]), TypeError, "ChunkTable"),
    ("num-chunks", dict(k_chunks=r(NC + 1, HKV, C, D), v_chunks=r(NC + 1, HKV, C, D)), ValueError, "chunks"),
    ("chunk-longer-than-C", dict(k_chunks=r(NC, HKV, 4, D), v_chunks=r(NC, HKV, 4, D)), ValueError, "chunk size"),
    ("heads", dict(k_chunks=r(NC, 3, C, D), v_chunks=r(NC, 3, C, D)), ValueError, "multiple"),
]


@pytest.mark.parametrize("name,kw,err,word", CHUNK_BAD, ids=[c[0] for c in CHUNK_BAD])
def test_chunk_rejects(name, kw, err, word):
    with pytest.raises(err, match=word):
        ca(**kw)


TABLE_BAD = [
    ("id-out-of-range", [[0, 6]], [1] * 6, "out of range"),
    ("id-below-minus-one", [[0, -2]], [1] * 6, "out of range"),
    ("len-zero", [[0, 1]], [1, 0, 1], ">= 1"),
    ("hole-in-padding", [[0, -1, 1]], [1, 1], "after a -1"),
    ("chunk-twice", [[0, 0]], [1], "twice"),
    ("non-contiguous-sharing", [[0, 1], [2, 3], [0, 4]], [1] * 5, "not contiguous"),
]


@pytest.mark.parametrize("name,sc,cl,word", TABLE_BAD, ids=[c[0] for c in TABLE_BAD])
def test_table_rejects(name, sc, cl, word):
    with pytest.raises(ValueError, match=word):
        ChunkTable.from_seq_chunks(sc, cl)


def test_table_rejects_float_ids_and_inconsistent_shared_ranges():
    with pytest.raises(TypeError, match="seq_chunks"):
        ChunkTable.from_seq_chunks(torch.zeros(2, 2), [1])
    t = ChunkTable.from_seq_chunks([[0, 1], [0, 2]], [1, 1, 1])
    i = lambda x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    with pytest.raises(ValueError, match="do not match"):
        ChunkTable(t.seq_chunks, t.chunk_lens, i([0]), i([0]), i([1]))
    with pytest.raises(ValueError, match="do not match"):
        ChunkTable(t.seq_chunks, t.chunk_lens, i([]), i([]), i([]))


def test_merge_rejects():
    with pytest.raises(ValueError, match="lses"):
        attn.merge_states(r(2, 3, D), r(2, 4), backend="spy")
    with pytest.raises(TypeError, match="float32"):
        attn.merge_states(r(2, 3, D), torch.zeros(2, 3, dtype=torch.int64), backend="spy")
    with pytest.raises(ValueError, match="K, ..., D"):
        attn.merge_states(r(3), r(3), backend="spy")


def test_table_derived_fields():
    t = ChunkTable.from_seq_chunks([[0, 1, 2], [0, 1, 3], [0, 4, -1], [5, -1, -1]], [8, 8, 3, 5, 8, 1])
    assert t.shared_chunks.tolist() == [0, 1]
    assert t.shared_begin.tolist() == [0, 0] and t.shared_end.tolist() == [3, 2]
    assert t.private_chunks.tolist() == [[2], [3], [4], [5]]
    assert t.seq_shared.tolist() == [[0, 1], [0, 1], [0, -1], [-1, -1]]
    assert (t.num_seqs, t.num_chunks, t.max_chunk_len, t.max_group_size, t.max_seq_tokens) == (4, 6, 8, 3, 21)
    assert t.seq_chunks.dtype == torch.int32


META = torch.device("meta")  # a second device on a CPU-only machine (shapes only, no data)

MORE_SHARED_PREFIX_BAD = [
    ("device-mix", dict(prefix_v=torch.empty(P, HKV, D, device=META)), ValueError, "one device"),
    ("prefix-type", dict(prefix_k="keys", prefix_v="values"), TypeError, "prefix_k must be a tensor"),
    ("suffix-shape-mismatch", dict(suffix_v=r(B, S + 1, HKV, D)), ValueError, "one shape"),
    ("suffix-head-dim", dict(suffix_k=r(B, S, HKV, D + 1), suffix_v=r(B, S, HKV, D + 1)), ValueError, "head dim"),
    ("lens-other-device", dict(suffix_lens=torch.zeros(B, dtype=torch.int32, device=META)), ValueError,
     "suffix_lens is on meta"),
]


@pytest.mark.parametrize("name,kw,err,word", MORE_SHARED_PREFIX_BAD, ids=[c[0] for c in MORE_SHARED_PREFIX_BAD])
def test_shared_prefix_rejects_more(name, kw, err, word):
    with pytest.raises(err, match=word):
        sp(**kw)


@pytest.mark.parametrize("scale", [float("inf"), float("nan"), True])
def test_scale_must_be_a_finite_float(scale):
    with pytest.raises(ValueError if not isinstance(scale, bool) else TypeError, match="scale"):
        attn.shared_prefix_attention(Q, PK, PV, scale=scale, backend="spy")


def test_suffix_lens_may_be_a_list_of_ints():
    """A Python list is taken as the lengths tensor (and checked like one)."""
    lens = [1, 7, 0, 3]
    got = attn.shared_prefix_attention(Q, PK, PV, SK, SV, lens, backend="torch")
    want = attn.shared_prefix_attention(Q, PK, PV, SK, SV, torch.tensor(lens, dtype=torch.int32), backend="torch")
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="suffix_lens"):
        sp(suffix_lens=[1, 2, S + 1, 0])


def test_chunk_rejects_head_dim():
    with pytest.raises(ValueError, match="head dim"):
        ca(k_chunks=r(NC, HKV, C, D + 1), v_chunks=r(NC, HKV, C, D + 1))


def test_merge_rejects_more():
    with pytest.raises(TypeError, match="tensors"):
        attn.merge_states("outs", "lses", backend="spy")
    with pytest.raises(TypeError, match="floating"):
        attn.merge_states(torch.ones(2, 3, D, dtype=torch.int32), r(2, 3), backend="spy")
    with pytest.raises(ValueError, match="lses is on meta"):
        attn.merge_states(r(2, 3, D), torch.empty(2, 3, device=META), backend="spy")
    with pytest.raises(ValueError, match="at least one state"):
        attn.merge_states(r(0, 3, D), r(0, 3), backend="spy")


def test_host_lengths_are_copied_as_int32():
    from attn.problems import _lengths_on
    lens = torch.tensor([3, 0, 7, 1], dtype=torch.int64)
    got = _lengths_on(lens, torch.device("cpu"))
    assert got.dtype == torch.int32 and got.is_contiguous() and got.tolist() == [3, 0, 7, 1]


@pytest.mark.gpu
def test_host_lengths_reach_the_gpu_without_a_sync_and_gpu_lengths_with_one():
    """Checked on the host, copied without waiting for the GPU, and a copy (a later change to
    the caller's tensor does not reach the problem); on the GPU the check reads them back."""
    from attn.problems import shared_prefix_problem
    dev = torch.device("cuda")
    args = [t.to(dev) for t in (Q, PK, PV, SK, SV)]
    lens = torch.tensor([1, 7, 0, 3], dtype=torch.int32)
    lens_gpu = lens.to(dev)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        p = shared_prefix_problem(*args, suffix_lens=lens)
        lens[0] = 5
        with pytest.raises(RuntimeError, match="synchroniz"):
            shared_prefix_problem(*args, suffix_lens=lens_gpu)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert p.suffix_lens.device.type == "cuda" and p.suffix_lens.tolist() == [1, 7, 0, 3]


@pytest.mark.gpu
def test_host_lengths_inside_a_graph_capture_are_refused():
    from attn.problems import shared_prefix_problem
    dev = torch.device("cuda")
    args = [t.to(dev) for t in (Q, PK, PV, SK, SV)]
    lens = torch.tensor([1, 7, 0, 3], dtype=torch.int32)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(ValueError, match="cannot be captured"):
        with torch.cuda.graph(graph):
            shared_prefix_problem(*args, suffix_lens=lens)
