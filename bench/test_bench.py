"""One benchmark per (workload, backend, dtype, op); see conftest.py for how to run.

pytest-benchmark's own timer would time the host. Here each pedantic round replays a CUDA
graph of many calls (attn.timing.OpTimer) and advances a virtual clock by the measured
per-call GPU time, so the stored stats (min, median, ...) are per-call GPU seconds.
"""
from __future__ import annotations

import math

import pytest
import torch

from attn.cases import SDPA, backend_reasons, case_id, op_callable
from attn.perf import DTYPES, metrics, workload_params


class GpuClock:
    """A clock that only moves when told: pytest-benchmark reads it before and after each
    round, and the round advances it by the per-call time it measured."""

    __name__ = "attn.timing.OpTimer (per-call GPU time)"

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _first_output(result):
    return result[0] if isinstance(result, tuple) else result


def test_bench(benchmark, case, bench_case, bench_state):
    w, backend, dt, op = bench_case
    dtype = DTYPES[dt]
    if bench_state.device.type != "cuda" and not bench_state.smoke:
        pytest.skip("no CUDA device: the spec's workloads are timed on a GPU (use --smoke on the CPU)")
    inputs = bench_state.inputs(w, dtype)
    reasons = backend_reasons(backend, inputs, op)
    if reasons:
        pytest.skip(f"{backend}: " + "; ".join(reasons))
    try:
        fn = op_callable(backend, inputs, op)
        out = _first_output(fn())
        timer = bench_state.timer(fn)
    except torch.cuda.OutOfMemoryError as e:
        fn = out = None
        torch.cuda.empty_cache()
        pytest.skip(f"{backend} does not fit in GPU memory on {w.id} {dt}: {str(e).splitlines()[0]}")
    # Timing garbage is worse than no timing: the op must at least produce a finite output.
    assert out.shape == inputs.level.q.shape and out.dtype == dtype
    assert bool(torch.isfinite(out).all()), f"{case}: non-finite output"
    del out

    clock = GpuClock()
    if not hasattr(benchmark, "_timer"):
        pytest.fail("pytest-benchmark changed: BenchmarkFixture._timer is gone; per-call GPU time cannot be stored")
    benchmark._timer = clock
    benchmark.name = case_id(w, backend, dt, op)
    benchmark.group = f"{w.id}-{dt}"
    per_call = []

    def one_round():
        t = timer.round()
        per_call.append(t)
        clock.now += t

    try:
        benchmark.pedantic(one_round, rounds=bench_state.rounds, iterations=1, warmup_rounds=0)
    finally:
        timing = timer.timing(per_call)
        timer.close()
    median = timing.median_s
    if backend == SDPA:
        bench_state.sdpa_s[(w.id, dtype)] = median
    sdpa = bench_state.sdpa_seconds(inputs)
    info = {"workload": w.id, "backend": backend, "dtype": dt, "op": op, "params": workload_params(w),
            "device": str(bench_state.device), "timing": timing.as_dict()}
    info.update(metrics(w, dtype, median, suffix_lens=inputs.suffix_lens, ceilings=bench_state.ceilings,
                        sdpa_seconds=sdpa))
    if sdpa is None:
        info["sdpa_skipped"] = bench_state.sdpa_skip.get((w.id, dtype), "")
    benchmark.extra_info.update(info)
    assert math.isfinite(median) and median >= 0
