"""The tk kernels on an sm_90 GPU: the agreement grid at benchmark sizes, tk against triton,
the merge kernels, plan and schedule variants, direct plans, lazy rescaling, chunk shapes and
CUDA-graph capture. On a machine without one every test skips with the backend's reason."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import attn
from attn.problems import chunk_problem, shared_prefix_problem
from attn.testing import Oracle
from attn.tk_ext import backend as tkb
from attn.tk_ext import plan
from attn.torch_backend import merge
from attn.workloads import Workload, make_inputs, to_chunk_form
from cases import CASES, poison_past_lengths
from conftest import require_backend

W = Workload


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
    monkeypatch.setenv("ATTN_TK_DECODE_WG", "0")  # CTA heads go with one-list plans only
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
@pytest.mark.parametrize("mode", ["0", "1"], ids=["one-list", "decode-wg"])
@pytest.mark.parametrize("case", [c for c in GPU_CASES if not c.id.startswith("spec-") or c.id in (
    "spec-hydragen-mqa-ragged-level", "spec-tree-3level-ragged-chunk", "spec-chunkattn-mha-level",
    "spec-gqa-8b-long-chunk")], ids=lambda c: c.id)
def test_gpu_both_kernel_forms_agree(tk, case, mode, monkeypatch):
    """Every plan on the one-list kernels (ATTN_TK_DECODE_WG=0) and, where it has solo items,
    on the decode-warpgroup kernels (=1: a third warpgroup runs them from its own ring) passes
    the oracle, whichever form ``auto`` would pick."""
    monkeypatch.setenv("ATTN_TK_DECODE_WG", mode)
    inp = case.inputs(torch.bfloat16, "cuda")
    p = case.problem(inp)
    verdict = Oracle(p).judge(*_call(case.op, inp, "tk"))
    assert verdict.ok, str(verdict)
    hit = tk.level_items(p) if case.op == "shared_prefix" else tk.chunk_items(p)
    solo = bool((hit[0][:, tkb.plan.F_FLAGS] & tkb.plan.FLAG_SOLO).any())
    assert hit[-2] == solo and (mode == "1" or not solo)


@pytest.mark.gpu
@pytest.mark.parametrize("poison", ["nan", "inf"])
@pytest.mark.parametrize("mode", ["0", "1"], ids=["one-list", "decode-wg"])
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c.id in (
    "spec-gqa-8b-ragged-level", "spec-gqa-8b-ragged-chunk", "spec-hydragen-mqa-ragged-chunk",
    "spec-tree-3level-ragged-level", "spec-chunkattn-mha-ragged-chunk", "chunk16-3level-gqa4",
    "prefix65-gqa4-d64-ragged")], ids=lambda c: c.id)
def test_gpu_past_lengths_in_both_kernel_forms(tk, case, mode, poison, monkeypatch):
    """NaN or inf past every suffix's and chunk's length, on the one-list kernels and on the
    decode warpgroup's (its own ring and its own P V): a tile that ends a length is loaded by
    16-key boxes and its V rows past the keys are zeroed at the tile's start (tile_ops.cuh)."""
    monkeypatch.setenv("ATTN_TK_DECODE_WG", mode)
    inp = case.inputs(torch.bfloat16, "cuda")
    assert poison_past_lengths(inp, float(poison)) > 0
    p = case.problem(inp)
    verdict = Oracle(p).judge(*_call(case.op, inp, "tk"))
    assert verdict.ok, f"{poison} past the lengths: {verdict}"


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
    Ragged, with one empty sequence, and NaN past every length."""
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
    assert poison_past_lengths(inp, float("nan")) > 0
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
    every consumer schedule skips (row-split shared chunks, kv-split private ones); inf in
    every row past a chunk's length."""
    w = W("", 32, 16, 4, ((1, 300), (4, 70)), 90, d, ragged=True)
    inp = to_chunk_form(make_inputs(w, dtype, "cuda", seed=11), chunk, shuffle=True, seed=11)
    assert poison_past_lengths(inp, float("inf")) > 0
    out, lse = _call("chunk", inp, "tk")
    verdict = Oracle(chunk_problem(*inp.args())).judge(out, lse)
    assert verdict.ok, str(verdict)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for c in GPU_CASES if not c.id.startswith("spec-") or c.id in (
    "spec-chunkattn-mha-ragged-level", "spec-tree-3level-chunk", "spec-hydragen-mqa-ragged-chunk",
    "spec-gqa-8b-level", "spec-no-share-ragged-level")], ids=lambda c: c.id)
def test_gpu_unit_queue_agrees(tk, case, monkeypatch):
    """Plans run from the unit queue (ATTN_TK_QUEUE=1; csrc/unit_queue.cuh) pass the oracle, give
    the same bits again on the next calls (each launch must leave its counter zero, or the next
    would skip units), and leave the stream's counter zero."""
    monkeypatch.setenv("ATTN_TK_QUEUE", "1")
    monkeypatch.setenv("ATTN_TK_DECODE_WG", "0")
    inp = case.inputs(torch.bfloat16, "cuda")
    p = case.problem(inp)
    if tk.not_supported_reasons(p):
        pytest.skip("; ".join(tk.not_supported_reasons(p)))
    out, lse = _call(case.op, inp, "tk")
    verdict = Oracle(p).judge(out, lse)
    assert verdict.ok, str(verdict)
    assert (tk.level_items(p) if case.op == "shared_prefix" else tk.chunk_items(p))[-1] is not None
    for _ in range(3):
        again = _call(case.op, inp, "tk")
        assert torch.equal(again[0], out) and torch.equal(again[1], lse)
    torch.cuda.synchronize()
    assert not tk._counters.get(inp.q.device).any()


def _walk_cases():
    from tk_emulation import PLAN_CASES
    small = [c.values[0] if isinstance(c, type(pytest.param(0))) else c for c in PLAN_CASES]
    return [c for c in small if c.op == "shared_prefix" and not c.gpu_only] + [
        c for c in GPU_CASES if c.id in ("gpu-tree3-p2048", "spec-tree-3level-level", "spec-tree-3level-ragged-level")]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", _walk_cases(), ids=lambda c: c.id)
def test_gpu_walked_leaves_agree(tk, case, dtype, monkeypatch):
    """Plans whose leaf items walk their sequences' suffixes (ATTN_TK_WALK=1: the kernels with
    WALK, each suffix tile masked to its sequence's rows) pass the oracle, with NaN past every
    ragged length (the walked tails' V rows are zeroed as the suffix items' are); the plain plan
    of the same inputs passes too."""
    inp = case.inputs(dtype, "cuda")
    p = case.problem(inp)
    if tk.not_supported_reasons(p):
        pytest.skip("; ".join(tk.not_supported_reasons(p)))
    poison_past_lengths(inp, float("nan"))
    if not case.gpu_only:  # the small cases planned on 3 CTAs, as the CPU emulation plans them: more of them walk
        monkeypatch.setattr(tk, "_num_sms", lambda device: 3)
    monkeypatch.setattr(tk, "_plans", {})  # plans of this SM count stay in this test
    monkeypatch.setenv("ATTN_TK_WALK", "1")
    out, lse = _call(case.op, inp, "tk")
    walk = tk.level_items(p)[6]
    assert walk or not (case.id.startswith(("tree-walk", "spec-tree", "gpu-tree"))), "this plan should walk"
    verdict = Oracle(p).judge(out, lse)
    assert verdict.ok, str(verdict)
    monkeypatch.setenv("ATTN_TK_WALK", "0")
    plain = _call(case.op, inp, "tk")
    assert not tk.level_items(p)[6]
    plain_verdict = Oracle(p).judge(*plain)
    assert plain_verdict.ok, str(plain_verdict)


@pytest.mark.gpu
@pytest.mark.parametrize("queue", ["0", "1"], ids=["static", "queue"])
@pytest.mark.parametrize("op", ["shared_prefix", "chunk", "merge", "direct"])
def test_gpu_cuda_graph_capture_and_replay(tk, op, queue, monkeypatch):
    # "direct": nothing shared, so the items write the output (no merge launch)
    monkeypatch.setenv("ATTN_TK_QUEUE", queue)
    if queue == "1":
        monkeypatch.setenv("ATTN_TK_DECODE_WG", "0")
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
    for _ in range(3):  # (a replay that left its unit queue's counter set would lose units in the next)
        graph.replay()
        torch.cuda.synchronize()
        e_out, e_lse = fn()
        assert torch.equal(g_out, e_out) and torch.equal(g_lse, e_lse)


@pytest.mark.gpu
def test_gpu_eager_call_with_host_lengths_does_not_sync(tk):
    """A warmed-up ragged call with suffix_lens on the CPU: no host synchronisation anywhere
    (validation, plan lookup, buffers, launches), and the oracle's answer."""
    w = W("", 8, 8, 2, ((1, 300), (2, 70)), 100, 128, ragged=True)
    inp = make_inputs(w, torch.bfloat16, "cuda", seed=3)
    host = dataclasses.replace(inp, suffix_lens=inp.suffix_lens.cpu())
    _call("shared_prefix", host, "tk")  # the first call builds the plan (host-to-device copies)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, lse = _call("shared_prefix", host, "tk")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    verdict = Oracle(shared_prefix_problem(*inp.args())).judge(out, lse)
    assert verdict.ok, str(verdict)
