"""Both ops against the independent naive oracle on random cases, the two ops against each
other on the same workload, the spec's edge cases, and the LSE-merge algebra."""
from __future__ import annotations

import math
import random

import pytest
import torch

import attn
from attn.problems import chunk_problem, shared_prefix_problem
from attn.reference import naive_attention
from attn.testing import Oracle
from attn.workloads import Workload, make_inputs, to_chunk_form
from conftest import DEVICE

ODD = [1, 2, 63, 64, 65, 127, 257]


def random_workload(seed: int) -> Workload:
    rng = random.Random(seed)
    b = rng.choice([1, 2, 3, 4, 6, 8])
    ratio = rng.choice([1, 4, 8])
    hkv = rng.choice([1, 2])
    divisors = [g for g in range(1, b + 1) if b % g == 0]
    levels = tuple((rng.choice(divisors) if i else 1, rng.choice(ODD)) for i in range(rng.choice([0, 1, 1, 2, 3])))
    suffix = rng.choice([0, 1, 63, 65])
    return Workload(f"rand{seed}", b, hkv * ratio, hkv, levels, suffix, rng.choice([64, 128]),
                    ragged=suffix > 1 and rng.random() < 0.5)


SEEDS = list(range(16))


def _skip_unsupported(backend, problem):
    reasons = backend.not_supported_reasons(problem)
    if reasons:
        pytest.skip("; ".join(reasons))


@pytest.mark.parametrize("seed", SEEDS)
def test_random_shared_prefix_matches_naive(backend, seed):
    w = random_workload(seed)
    dtype = torch.float64 if backend.name == "torch" else torch.float32
    inp = make_inputs(w, dtype, DEVICE, seed=seed)
    problem = shared_prefix_problem(*inp.args())
    _skip_unsupported(backend, problem)
    out, lse = attn.shared_prefix_attention(*inp.args(), return_lse=True, backend=backend.name)
    verdict = Oracle(problem).judge(out, lse)
    assert verdict.ok, f"{w}: {verdict}"


@pytest.mark.parametrize("chunk", [16, 32, 64])
@pytest.mark.parametrize("seed", SEEDS[:8])
def test_random_chunk_tree_matches_naive(backend, seed, chunk):
    w = random_workload(100 + seed)
    dtype = torch.float64 if backend.name == "torch" else torch.float32
    ci = to_chunk_form(make_inputs(w, dtype, DEVICE, seed=seed), chunk, shuffle=True, seed=seed)
    problem = chunk_problem(*ci.args())
    _skip_unsupported(backend, problem)
    out, lse = attn.chunk_attention(*ci.args(), return_lse=True, backend=backend.name)
    verdict = Oracle(problem).judge(out, lse)
    assert verdict.ok, f"{w} C={chunk}: {verdict}"


@pytest.mark.parametrize("seed", SEEDS[:8])
def test_both_ops_agree_on_one_workload(backend, seed):
    w = random_workload(200 + seed)
    inp = make_inputs(w, torch.float32, DEVICE, seed=seed)
    ci = to_chunk_form(inp, 32, shuffle=True, seed=seed)
    _skip_unsupported(backend, shared_prefix_problem(*inp.args()))
    _skip_unsupported(backend, chunk_problem(*ci.args()))
    o1, l1 = attn.shared_prefix_attention(*inp.args(), return_lse=True, backend=backend.name)
    o2, l2 = attn.chunk_attention(*ci.args(), return_lse=True, backend=backend.name)
    assert torch.allclose(o1, o2, atol=1e-5, rtol=1e-4)
    assert torch.equal(torch.isinf(l1), torch.isinf(l2))
    fin = torch.isfinite(l1)
    assert torch.allclose(l1[fin], l2[fin], atol=1e-5, rtol=1e-5)


def test_naive_oracle_is_plain_softmax_attention():
    """The oracle itself, against a hand-written two-key softmax."""
    q = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)  # B=1, Hq=1, D=2
    k = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    v = torch.tensor([[[2.0, 0.0]], [[0.0, 4.0]]], dtype=torch.float64)
    out, lse = naive_attention(q, [(k, v)], scale=1.0)
    w = torch.tensor([math.e, 1.0]) / (math.e + 1)
    assert torch.allclose(out[0, 0], torch.tensor([2 * w[0], 4 * w[1]], dtype=torch.float64))
    assert math.isclose(float(lse[0, 0]), math.log(math.e + 1))


def test_gqa_maps_query_head_to_kv_head_by_integer_division():
    # Hq=4, Hkv=2: heads 0,1 read kv head 0, heads 2,3 read kv head 1 (SPEC: h // (Hq // Hkv)).
    q = torch.randn(1, 4, 8, dtype=torch.float64)
    k = torch.randn(5, 2, 8, dtype=torch.float64)
    v = torch.zeros(5, 2, 8, dtype=torch.float64)
    v[:, 0] = 1.0
    v[:, 1] = -1.0
    out = attn.shared_prefix_attention(q, k, v, backend="torch")
    assert torch.allclose(out[0, :2], torch.ones(2, 8, dtype=torch.float64))
    assert torch.allclose(out[0, 2:], -torch.ones(2, 8, dtype=torch.float64))


def test_no_keys_gives_zero_and_minus_inf():
    q = torch.randn(3, 4, 16)
    sk = torch.randn(3, 5, 2, 16)
    lens = torch.tensor([0, 5, 0], dtype=torch.int32)
    out, lse = attn.shared_prefix_attention(q, torch.randn(0, 2, 16), torch.randn(0, 2, 16), sk, sk.clone(),
                                            lens, return_lse=True, backend="torch")
    assert (out[0] == 0).all() and (out[2] == 0).all() and torch.isneginf(lse[[0, 2]]).all()
    assert torch.isfinite(lse[1]).all() and out[1].abs().sum() > 0
    out, lse = attn.shared_prefix_attention(q, None, None, return_lse=True, backend="torch")
    assert (out == 0).all() and torch.isneginf(lse).all()


def test_scale_and_return_lse():
    q, k, v = torch.randn(2, 2, 8, dtype=torch.float64), torch.randn(6, 2, 8, dtype=torch.float64), torch.randn(6, 2, 8, dtype=torch.float64)
    out = attn.shared_prefix_attention(q, k, v, backend="torch")
    assert isinstance(out, torch.Tensor)
    o1, l1 = attn.shared_prefix_attention(q, k, v, scale=0.5, return_lse=True, backend="torch")
    o2, l2 = attn.shared_prefix_attention(q * (0.5 * math.sqrt(8)), k, v, return_lse=True, backend="torch")
    assert torch.allclose(o1, o2) and torch.allclose(l1, l2)
    assert not torch.allclose(o1, out)


def test_output_dtype_and_lse_dtype_follow_spec():
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        inp = make_inputs(Workload("", 2, 4, 2, ((1, 9),), 3, 64), dtype, DEVICE)
        out, lse = attn.shared_prefix_attention(*inp.args(), return_lse=True, backend="torch")
        assert out.dtype == dtype and lse.dtype == torch.float32


# ---- merge_states algebra ------------------------------------------------------------
def _states(k, seed, empty=()):
    g = torch.Generator().manual_seed(seed)
    outs = torch.randn(k, 3, 5, 64, generator=g, dtype=torch.float64)
    lses = torch.randn(k, 3, 5, generator=g, dtype=torch.float64) * 3
    for i in empty:
        lses[i] = float("-inf")
    return outs.to(DEVICE), lses.to(DEVICE)


#: merged outputs are rounded to the input dtype, and a nested merge rounds twice: 2 ulp at |x| < 4.
MERGE_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2.0**-8, torch.bfloat16: 2.0**-5}


def _in_supported_dtype(backend, outs, lses):
    """The states in the most precise dtype the backend merges (lses stay float32+)."""
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        o, l = outs.to(dtype), lses.to(torch.float64 if dtype == torch.float64 else torch.float32)
        if not backend.not_supported_reasons(attn.problems.merge_problem(o, l)):
            return o, l
    pytest.skip(f"{backend.name} merges none of the float dtypes here")


def test_merge_is_associative_and_order_independent(backend):
    outs, lses = _in_supported_dtype(backend, *_states(5, 0))
    m = lambda o, l: attn.merge_states(o, l, backend=backend.name)  # noqa: E731
    whole_o, whole_l = m(outs, lses)
    a_o, a_l = m(outs[:2], lses[:2])
    b_o, b_l = m(outs[2:], lses[2:])
    nested_o, nested_l = m(torch.stack([a_o, b_o]), torch.stack([a_l, b_l]))
    perm = torch.tensor([3, 0, 4, 2, 1])
    p_o, p_l = m(outs[perm], lses[perm])
    tol = MERGE_TOL[outs.dtype]
    for o, l in ((nested_o, nested_l), (p_o, p_l)):
        assert torch.allclose(o, whole_o, atol=tol) and torch.allclose(l.double(), whole_l.double(), atol=tol)


def test_merge_with_empty_state_is_identity(backend):
    outs, lses = _in_supported_dtype(backend, *_states(2, 1, empty=(1,)))
    o, l = attn.merge_states(outs, lses, backend=backend.name)
    assert torch.allclose(o, outs[0], atol=MERGE_TOL[outs.dtype]) and torch.allclose(l.double(), lses[0].double(), atol=1e-6)
    o, l = attn.merge_states(outs, torch.full_like(lses, float("-inf")), backend=backend.name)
    assert (o == 0).all() and torch.isneginf(l).all()


def test_merge_equals_attention_over_the_union():
    q = torch.randn(2, 4, 32, dtype=torch.float64)
    k, v = torch.randn(20, 4, 32, dtype=torch.float64), torch.randn(20, 4, 32, dtype=torch.float64)
    whole = attn.shared_prefix_attention(q, k, v, return_lse=True, backend="torch")
    parts = [attn.shared_prefix_attention(q, k[a:b], v[a:b], return_lse=True, backend="torch") for a, b in ((0, 7), (7, 8), (8, 20))]
    o, l = attn.merge_states([p[0] for p in parts], [p[1] for p in parts])
    assert torch.allclose(o, whole[0], atol=1e-12) and torch.allclose(l, whole[1], atol=1e-12)
