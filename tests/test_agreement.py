"""The cross-backend agreement grid: every backend x dtype x case against the float64 oracle
with the spec's criterion (attn.testing). A backend joins by registering."""
from __future__ import annotations

import functools
import itertools

import pytest
import torch

import attn
from attn.problems import merge_problem
from attn.testing import Oracle
from cases import CASES, poison_past_lengths
from conftest import DEVICE, selected_backends

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _dtype_id(d):
    return str(d).replace("torch.", "")


@functools.lru_cache(maxsize=8)
def _case(case_id: str, dtype: torch.dtype):
    case = next(c for c in CASES if c.id == case_id)
    inp = case.inputs(dtype, DEVICE)
    problem = case.problem(inp)
    return case, inp, problem, Oracle(problem)


def _skip_if_unsupported(backend, problem):
    reasons = backend.not_supported_reasons(problem)
    if reasons:
        pytest.skip(f"{backend.name} does not support this case: " + "; ".join(reasons))
    if backend.name == "triton" and problem.device.type == "cpu" and problem.dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 math (bf16 is covered on the GPU)")


def _run(case, inp, backend_name):
    fn = attn.shared_prefix_attention if case.op == "shared_prefix" else attn.chunk_attention
    return fn(*inp.args(), return_lse=True, backend=backend_name)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_agrees_with_oracle(backend, case_id, dtype):
    case = next(c for c in CASES if c.id == case_id)
    if case.gpu_only and DEVICE.type != "cuda":
        pytest.skip("benchmark-sized case: no CUDA device")
    if case.gpu_only and dtype == torch.float64:
        pytest.skip("benchmark-sized cases run in the kernels' dtypes only")
    case, inp, problem, oracle = _case(case_id, dtype)
    _skip_if_unsupported(backend, problem)
    out, lse = _run(case, inp, backend.name)
    assert out.shape == problem.q.shape and out.dtype == dtype
    assert lse.shape == problem.q.shape[:2]
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    verdict = oracle.judge(out, lse)
    assert verdict.ok, f"{backend.name} {case_id} {_dtype_id(dtype)}: {verdict}"


# Cases with keys past a length: ragged suffixes, partial chunks (gpu-chunk64-mha's are all full).
PAST_LENGTH_CASES = ["prefix65-gqa4-d64-ragged", "noprefix-gqa8", "2level-gqa4-d128", "gpu-gqa8b-p8192"] + [
    c.id for c in CASES if c.op == "chunk" and c.id != "gpu-chunk64-mha"]


@pytest.mark.parametrize("poison", ["nan", "inf"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=_dtype_id)
@pytest.mark.parametrize("case_id", PAST_LENGTH_CASES)
def test_keys_past_lengths_never_reach_the_output(backend, case_id, dtype, poison):
    """NaN or inf in every key and value row past a suffix's or a chunk's length (stale or
    uninitialised cache memory) leaves the result as the oracle, which never reads them, has it.
    A kernel that loads a whole tile and masks only the scores fails: P = 0 times V = NaN is NaN."""
    case = next(c for c in CASES if c.id == case_id)
    if case.gpu_only and DEVICE.type != "cuda":
        pytest.skip("benchmark-sized case: no CUDA device")
    inp = case.inputs(dtype, DEVICE)
    assert poison_past_lengths(inp, float(poison)) > 0, "the case has no rows past a length"
    problem = case.problem(inp)
    _skip_if_unsupported(backend, problem)
    out, lse = _run(case, inp, backend.name)
    verdict = Oracle(problem).judge(out, lse)
    assert verdict.ok, f"{backend.name} {case_id} {_dtype_id(dtype)} {poison} past the lengths: {verdict}"


def _kernel_pairs():
    return list(itertools.combinations([n for n in attn.backends() if n != "torch"], 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=_dtype_id)
@pytest.mark.parametrize("case_id", [c.id for c in CASES])
@pytest.mark.parametrize("pair", _kernel_pairs(), ids=lambda p: f"{p[0]}-vs-{p[1]}")
def test_kernel_backends_agree_directly(request, pair, case_id, dtype):
    chosen = selected_backends(request.config)
    if not all(n in chosen for n in pair):
        pytest.skip(f"--backend excludes one of {pair}")
    case = next(c for c in CASES if c.id == case_id)
    if case.gpu_only and DEVICE.type != "cuda":
        pytest.skip("benchmark-sized case: no CUDA device")
    case, inp, problem, oracle = _case(case_id, dtype)
    results = []
    for name in pair:
        b = attn.get_backend(name)
        if b.unavailable_reasons():
            pytest.skip(f"{name} unavailable: " + "; ".join(b.unavailable_reasons()))
        _skip_if_unsupported(b, problem)
        results.append(_run(case, inp, name))
    (o1, l1), (o2, l2) = results
    bound = oracle.judge(o1, l1)
    # Two kernels doing the same low-precision math are held to one backend's bound.
    assert float((o1.double() - o2.double()).abs().max()) <= bound.out_bound
    keep = ~oracle.empty.to(l1.device)
    lse_gap = (l1[keep].double() - l2[keep].double()).abs()
    assert (float(lse_gap.max()) if lse_gap.numel() else 0.0) <= bound.lse_bound


MERGE_SHAPES = [(2, (3, 4), 64), (5, (2, 8), 128), (1, (1, 1), 64), (3, (4,), 128)]


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("k,lead,d", MERGE_SHAPES, ids=[f"k{k}-{'x'.join(map(str, l))}-d{d}" for k, l, d in MERGE_SHAPES])
def test_merge_states_agrees(backend, k, lead, d, dtype):
    g = torch.Generator().manual_seed(k * 100 + d)
    outs = torch.randn(k, *lead, d, generator=g).to(dtype=dtype, device=DEVICE)
    lses = (torch.randn(k, *lead, generator=g) * 4).to(DEVICE)
    if k > 1:
        lses[0].view(-1)[0] = float("-inf")  # an empty partial state
    if lses[0].numel() > 1:
        lses.view(k, -1)[:, -1] = float("-inf")  # a row where every partial is empty
    problem = merge_problem(outs, lses)
    _skip_if_unsupported(backend, problem)
    out, lse = attn.merge_states(outs, lses, backend=backend.name)
    # Float64 truth from the same partial states.
    w = torch.softmax(lses.double(), dim=0)
    w = torch.nan_to_num(w, nan=0.0)
    ref = (w.unsqueeze(-1) * outs.double()).sum(0)
    ref_lse = torch.logsumexp(lses.double(), dim=0)
    assert out.dtype == dtype and out.shape == outs.shape[1:]
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert float((out.double() - ref).abs().max()) <= tol
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isneginf(lse), ~finite)
    assert float((lse.double()[finite] - ref_lse[finite]).abs().max()) <= 1e-5
    assert (out[~finite] == 0).all()
