"""pytest-benchmark suite: SPEC workloads x backends x dtypes x ops, timed on the GPU.

Run it on its own (its ``--backend`` option would clash with the tests' if both
conftests were loaded in one run; ``pytest`` from the repository root only collects
``tests/``)::

    bash bench/run.sh                       # GPU: every case, results stored per GPU
    pytest bench/ --smoke                   # CPU: tiny shapes, nothing timed (CI)

Options: ``--backend NAME`` (repeatable; ``sdpa`` names the baseline), ``--smoke`` (or
``ATTN_BENCH_SMOKE=1``), ``--bench-dtype bf16|fp16`` (repeatable), ``--bench-rounds N``.
Without ``--benchmark-storage`` results go to ``bench/results/<gpu-name-slug>/``.
"""
from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch

SMOKE_ENV = "ATTN_BENCH_SMOKE"
DTYPES = ("bf16", "fp16")
#: case id -> (workload, backend, dtype, op); filled at collection
CASES: dict = {}


def is_smoke(config) -> bool:
    return bool(config.getoption("--smoke")) or os.environ.get(SMOKE_ENV) == "1"


def pytest_addoption(parser):
    parser.addoption("--backend", action="append", default=[], metavar="NAME",
                     help="benchmark only this backend (repeatable): tk, triton, torch, or sdpa (the baseline)")
    parser.addoption("--smoke", action="store_true", default=False,
                     help=f"tiny shapes on the CPU with timing disabled, so the suite cannot rot (also {SMOKE_ENV}=1)")
    parser.addoption("--bench-dtype", action="append", default=[], choices=DTYPES, help="only this dtype (repeatable)")
    parser.addoption("--bench-rounds", type=int, default=None, help="timed rounds per case (default 20; smoke 1)")


def pytest_configure(config):
    smoke = is_smoke(config)
    if smoke and not torch.cuda.is_available():
        # Must precede the first import of triton (collection imports the backends).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import attn
    from attn.cases import SDPA
    from attn.perf import gpu_slug

    known = set(attn.backends()) | {SDPA}
    unknown = sorted(set(config.getoption("--backend")) - known)
    if unknown:
        raise pytest.UsageError(f"--backend: unknown backend(s) {unknown}; known: {sorted(known)}")
    if not hasattr(config.option, "benchmark_storage"):
        return  # pytest-benchmark not installed: the suite then errors on the fixture
    if smoke:
        config.option.benchmark_disable = True
    if config.option.benchmark_storage == "file://./.benchmarks":
        results = Path(str(config.rootpath)) / "bench" / "results" / gpu_slug()
        config.option.benchmark_storage = f"file://{results}"


def selected_backends(config) -> list:
    import attn
    from attn.cases import SDPA

    chosen = config.getoption("--backend")
    names = [SDPA] + list(attn.backends())
    return [n for n in names if not chosen or n in chosen]


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    from attn.cases import ops_of, small_workloads, spec_variants

    config = metafunc.config
    workloads = small_workloads() if is_smoke(config) else spec_variants()
    dtypes = config.getoption("--bench-dtype") or DTYPES
    ids = []
    # Grouped by workload so each workload's inputs are built once and freed before the next.
    for w in workloads:
        for dt in dtypes:
            for backend in selected_backends(config):
                for op in ops_of(backend):
                    pid = f"{w.id}-{backend}-{dt}-{op}"
                    CASES[pid] = (w, backend, dt, op)
                    ids.append(pid)
    metafunc.parametrize("case", ids)


class BenchState:
    """What the whole session shares: device, ceilings, the current inputs, sdpa times."""

    def __init__(self, config):
        from attn.timing import ceilings

        self.smoke = is_smoke(config)
        self.device = torch.device("cuda" if torch.cuda.is_available() and not self.smoke else "cpu")
        self.rounds = config.getoption("--bench-rounds") or (1 if self.smoke else 20)
        self.ceilings = ceilings(self.device) if self.device.type == "cuda" else None
        self._key = None
        self._inputs = None
        self.sdpa_s: dict = {}
        self.sdpa_skip: dict = {}

    def inputs(self, w, dtype):
        from attn.cases import build_inputs

        key = (w.id, dtype)
        if key != self._key:
            self._inputs = self._key = None
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._inputs = build_inputs(w, dtype, self.device)
            self._key = key
        return self._inputs

    def timer(self, fn):
        from attn.timing import OpTimer

        if self.smoke:
            return OpTimer(fn, self.device, warmup=1, calls=1)
        return OpTimer(fn, self.device)

    def sdpa_seconds(self, inputs):
        """The baseline's median on these inputs: measured by its own case, or here on
        first need (when ``--backend`` left it out)."""
        from attn.cases import SDPA, SDPA_OP, backend_reasons, op_callable

        key = (inputs.workload.id, inputs.dtype)
        if key not in self.sdpa_s:
            reasons = backend_reasons(SDPA, inputs, SDPA_OP)
            if reasons:
                self.sdpa_s[key], self.sdpa_skip[key] = None, "; ".join(reasons)
            else:
                t = self.timer(op_callable(SDPA, inputs, SDPA_OP))
                try:
                    self.sdpa_s[key] = t.timing([t.round() for _ in range(self.rounds)]).median_s
                finally:
                    t.close()
        return self.sdpa_s[key]


@pytest.fixture
def bench_case(case):
    """``(workload, backend, dtype name, op)`` of the parametrized case id."""
    return CASES[case]


_state = None


@pytest.fixture(scope="session")
def bench_state(request):
    global _state
    _state = BenchState(request.config)
    return _state


def pytest_benchmark_update_machine_info(config, machine_info):
    from attn.perf import machine_info as attn_machine_info

    ceil = _state.ceilings if _state is not None else None
    machine_info.update(attn_machine_info(ceil=ceil))
    machine_info["attn_bench"] = {"smoke": is_smoke(config),
                                  "timing": "CUDA graph replay of many calls (CUDA events if capture fails), "
                                            "L2 flushed before each call, median over rounds"}
