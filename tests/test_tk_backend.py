"""The tk backend's Python side on the CPU: what it supports, how it marshals arguments, and
its ops end to end on an emulated extension (:class:`tk_emulation.EmulatedExt`), with its
tuning switches checked before any launch."""
from __future__ import annotations

import pytest
import torch

from attn.problems import chunk_problem, shared_prefix_problem
from attn.testing import Oracle
from attn.tk_ext import backend as tkb
from attn.torch_backend import merge
from attn.workloads import Workload, make_inputs, to_chunk_form
from cases import CASES
from tk_emulation import PLAN_CASES, EmulatedExt

W = Workload


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
@pytest.mark.parametrize("mode", ["0", "1", "queue", "walk"], ids=["one-list", "decode-wg", "queue", "walk"])
def test_backend_marshalling_runs_end_to_end_on_an_emulated_extension(case, dtype, mode, emulated_tk, monkeypatch):
    """The tk backend's ops on the CPU with the kernels emulated: the flash-attention
    criterion against the float64 oracle, as on the GPU, and the launches the backend makes
    (a merge unless the plan is direct). The decode-warpgroup kernels' plans (two lists a CTA,
    solo items: attn.tk_ext.decode_streams; ATTN_TK_DECODE_WG=1) too; the emulation checks
    their lists and that solo items go to those kernels only."""
    case = case.values[0] if isinstance(case, type(pytest.param(0))) else case
    # walk: ATTN_TK_WALK=1 with the decode warpgroup wherever a plan allows it (a walking plan does not).
    monkeypatch.setenv("ATTN_TK_DECODE_WG", {"queue": "0", "walk": "1"}.get(mode, mode))
    monkeypatch.setenv("ATTN_TK_QUEUE", "1" if mode == "queue" else "0")
    monkeypatch.setenv("ATTN_TK_WALK", "1" if mode == "walk" else "0")
    tk, ext = emulated_tk
    p = case.problem(case.inputs(dtype, "cpu"))
    out, lse = (tk.run_shared_prefix if case.op == "shared_prefix" else tk.run_chunk)(p)
    verdict = Oracle(p).judge(out, lse)
    assert verdict.ok, verdict
    dwg, queue = (tk.level_items(p) if case.op == "shared_prefix" else tk.chunk_items(p))[-2:]
    walk = case.op == "shared_prefix" and tk.level_items(p)[6]
    assert walk <= (mode == "walk") and (walk or not case.id.startswith("tree-walk") or mode != "walk")  # these walk at every split
    assert mode in ("1", "walk") or not dwg  # and the emulation checks: two-list kernels iff solo items
    assert not (walk and dwg)
    assert (queue is not None) == (mode == "queue")  # and the emulation checks the queue's claims
    base = "shared_prefix_partials" if case.op == "shared_prefix" else "chunk_partials"
    assert ext.calls[0] == base + ("_dwg" if dwg else "")
    assert ext.calls[1:] in ([], ["merge"])


@pytest.mark.parametrize("switch", ["ATTN_TK_PARTIALS=float32", "ATTN_TK_LSE_FILL=1", "ATTN_TK_HEADS=0"])
def test_backend_switches_on_an_emulated_extension(switch, emulated_tk, monkeypatch):
    """The call-time switches change what the backend hands to the launch (float32 partial
    outs, lses filled with -inf, no CTA heads) and the results stay right."""
    name, value = switch.split("=")
    monkeypatch.setenv("ATTN_TK_DECODE_WG", "0")  # one-list plans (two-list ones never take heads)
    tk, ext = emulated_tk
    seen = []
    real = ext._check_launch

    def check(q, items, ctas, po, pl, out, lse, heads, dwg=False):
        real(q, items, ctas, po, pl, out, lse, heads, dwg)
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


@pytest.mark.parametrize("ragged", [False, True], ids=["full-chunks", "partial-chunks"])
def test_a_chunk_launch_says_whether_any_chunk_is_partial(ragged, emulated_tk):
    """The chunk kernels are compiled without zeroing past a length where no chunk is partial
    (csrc/chunk_attn.cu TAILS): the flag comes from the table's host lengths, cached on it,
    and the emulated launch checks it against the pool."""
    tk, ext = emulated_tk
    w = Workload("", 3, 4, 2, ((1, 64),), 64 if not ragged else 50, 64, ragged=ragged)
    p = chunk_problem(*to_chunk_form(make_inputs(w, torch.float16, "cpu", seed=3), 32).args())
    assert tk.chunk_tails(p) is ragged and p.table.host["tk_tails"] is ragged
    verdict = Oracle(p).judge(*tk.run_chunk(p))
    assert verdict.ok, verdict
    assert ext.calls[0].startswith("chunk_partials")


def test_partial_dtype_is_the_ops_unless_float32_is_asked(monkeypatch):
    monkeypatch.delenv("ATTN_TK_PARTIALS", raising=False)
    assert tkb.partial_dtype(torch.bfloat16) == torch.bfloat16 and tkb.partial_dtype(torch.float16) == torch.float16
    monkeypatch.setenv("ATTN_TK_PARTIALS", "float32")
    assert tkb.partial_dtype(torch.bfloat16) == torch.float32


def test_numeric_plan_switch_typos_are_refused_when_a_plan_is_built(monkeypatch):
    """The decode-warpgroup switches are parsed on every plan build, even a direct plan's
    (no-share), which has no solo items and would not read them."""
    tk = tkb.TKBackend()
    monkeypatch.setattr(tk, "_num_sms", lambda device: 132)
    monkeypatch.delenv("ATTN_TK_DECODE_WG", raising=False)
    for name, bad in (("ATTN_TK_SOLO_COSTS", "1.7"), ("ATTN_TK_DWG_SLOWDOWN", "0.5"), ("ATTN_TK_DWG_MARGIN", "5%")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=name):
            tk.placed_level_plan(4, 8, 2, [], 64, False, "cpu")
        monkeypatch.delenv(name)
    assert tk.placed_level_plan(4, 8, 2, [], 64, False, "cpu")[2]  # direct


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


def test_the_kernel_form_follows_attn_tk_decode_wg(emulated_tk, monkeypatch):
    """ATTN_TK_DECODE_WG: 1 sends a plan with solo items to the decode-warpgroup kernels (two
    lists a CTA, no CTA heads), 0 never does, anything else is refused before any launch; each
    mode has its own cached plan."""
    tk, ext = emulated_tk
    case = next(c for c in CASES if c.id == "3level-mha-d128")
    p = case.problem(case.inputs(torch.float32, "cpu"))
    monkeypatch.setenv("ATTN_TK_DECODE_WG", "yes")
    with pytest.raises(ValueError, match="ATTN_TK_DECODE_WG"):
        tk.run_shared_prefix(p)
    assert ext.calls == []
    monkeypatch.setenv("ATTN_TK_DECODE_WG", "1")
    items, ctas, _, _, _, heads, _, dwg, _ = tk.level_items(p)
    assert dwg and heads.numel() == 0 and len(ctas) == 2 * 3 + 1
    assert (items[:, tkb.plan.F_FLAGS] & tkb.plan.FLAG_SOLO).any()
    assert Oracle(p).judge(*tk.run_shared_prefix(p)).ok and ext.calls[0] == "shared_prefix_partials_dwg"
    monkeypatch.setenv("ATTN_TK_DECODE_WG", "0")
    items0, ctas0, _, _, _, heads0, _, dwg0, _ = tk.level_items(p)
    assert not dwg0 and len(ctas0) == 3 + 1 and heads0.numel() > 0
    assert not (items0[:, tkb.plan.F_FLAGS] & tkb.plan.FLAG_SOLO).any()
    n = len(ext.calls)
    assert Oracle(p).judge(*tk.run_shared_prefix(p)).ok and ext.calls[n] == "shared_prefix_partials"
