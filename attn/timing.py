"""GPU time of an op: the one clock of ``bench/``, ``python -m attn compare`` and the tests.

On a CUDA device an op is timed per call on the GPU, never by a host timer around an
asynchronous launch:

1. warm-up: the op runs a few times first (on a side stream, as CUDA graph capture wants),
   so that JIT compilation, autotuning and lazy allocations are excluded;
2. ``calls`` back-to-back calls are captured into one CUDA graph; a *round* replays the
   graph between two CUDA events and gives ``elapsed / calls``. Replay removes the
   Python and launch overhead between calls, which is host work, not GPU work;
3. if capture fails (an op that synchronises with the host, say) each call is timed
   between its own pair of CUDA events instead; the method used is recorded;
4. the result is the median over rounds.

By default the L2 cache is flushed before every call, as ``triton.testing.do_bench``
does: each call writes a 256 MiB buffer first, so an op never finds its inputs in L2 from
the previous call (in real decoding the rest of the model runs in between). With graph
replay the flushes are in the graph too; a second graph of flushes alone is replayed in
the same round and its time subtracted.

On the CPU the clock is a plain host timer: that path exists for smoke runs only.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

#: bytes written before each call to evict the previous call's data from L2 (triton's size)
FLUSH_BYTES = 256 * 2**20
#: a round lasts about this long on the GPU (seconds), unless ``calls`` is given
GPU_ROUND_S = 0.01
#: and this long on the CPU
CPU_ROUND_S = 0.02
MAX_CALLS = 1000

_flush_buffers: dict = {}


def _flush_buffer(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _flush_buffers:
        _flush_buffers[key] = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    return _flush_buffers[key]


@dataclass
class Timing:
    """Per-call times of an op, one value per round (seconds).

    ``method`` is ``"cuda-graph"``, ``"cuda-events"`` or ``"host"``; ``calls`` the calls
    per round; ``note`` says why graph capture was not used, when it was not.
    """

    rounds_s: list = field(default_factory=list)
    method: str = ""
    calls: int = 1
    flush_l2: bool = False
    note: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.rounds_s) if self.rounds_s else float("nan")

    @property
    def median_us(self) -> float:
        return self.median_s * 1e6

    def as_dict(self) -> dict:
        return {"median_us": self.median_us, "rounds": len(self.rounds_s), "method": self.method,
                "calls_per_round": self.calls, "l2_flush": self.flush_l2, "note": self.note}


def _elapsed_s(start: torch.cuda.Event, end: torch.cuda.Event) -> float:
    end.synchronize()
    return start.elapsed_time(end) / 1e3


class OpTimer:
    """Times ``fn`` (no arguments) on ``device``; each :meth:`round` gives one per-call time.

    Construction does the warm-up, picks ``calls`` and captures the graphs, so that
    whatever times the rounds (pytest-benchmark, :func:`time_op`) sees none of that.

    Parameters
    ----------
    fn : callable
        The op. Its result is discarded; it must not change its inputs.
    device : torch.device or str
        Where ``fn`` runs; ``"cpu"`` uses a host timer.
    warmup : int
        Calls before anything is timed.
    calls : int, optional
        Calls per round; default: as many as fill about ``GPU_ROUND_S`` (``CPU_ROUND_S``).
    flush_l2 : bool, optional
        Flush L2 before each call (default: on a GPU, yes).
    use_graph : bool
        Try CUDA graph capture first (default); False times with events only.
    """

    def __init__(self, fn: Callable[[], object], device, *, warmup: int = 3, calls: Optional[int] = None,
                 flush_l2: Optional[bool] = None, use_graph: bool = True):
        self.fn = fn
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.flush_l2 = bool(self.cuda if flush_l2 is None else flush_l2) and self.cuda
        self.note = ""
        self._graph = self._flush_graph = None
        if not self.cuda:
            self.method = "host"
            for _ in range(warmup):
                fn()
            self.calls = calls or self._calibrate_host()
            return
        with torch.cuda.device(self.device):
            self._buf = _flush_buffer(self.device) if self.flush_l2 else None
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            # Blocks cached by the warm-up would sit beside the graph's private pool.
            torch.cuda.empty_cache()
            self.calls = calls or self._calibrate_gpu()
            self.method = "cuda-events"
            if use_graph:
                try:
                    self._graph = self._capture(with_op=True)
                    if self.flush_l2:
                        self._flush_graph = self._capture(with_op=False)
                    self.method = "cuda-graph"
                except Exception as e:  # capture refused: a host sync, an uncapturable op, ...
                    self._graph = self._flush_graph = None
                    self.note = f"graph capture failed ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); timed with CUDA events"
                    try:
                        torch.cuda.synchronize()
                    except Exception:
                        pass

    # ---- calibration ----------------------------------------------------------------
    def _calibrate_host(self) -> int:
        t0 = time.perf_counter()
        self.fn()
        t = max(time.perf_counter() - t0, 1e-7)
        return int(min(MAX_CALLS, max(1, CPU_ROUND_S // t)))

    def _calibrate_gpu(self) -> int:
        per = []
        for _ in range(3):
            per.append(self._events_call())
        t = max(statistics.median(per), 1e-7)
        flush = 0.0
        if self.flush_l2:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self._buf.zero_()
            end.record()
            flush = _elapsed_s(start, end)
        return int(min(MAX_CALLS, max(1, GPU_ROUND_S // (t + flush))))

    def _events_call(self) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if self.flush_l2:
            self._buf.zero_()
        start.record()
        self.fn()
        end.record()
        return _elapsed_s(start, end)

    def _capture(self, with_op: bool) -> torch.cuda.CUDAGraph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(self.calls):
                if self.flush_l2:
                    self._buf.zero_()
                if with_op:
                    self.fn()
        torch.cuda.synchronize()
        return g

    # ---- timing ---------------------------------------------------------------------
    def round(self) -> float:
        """One round: the per-call time in seconds."""
        if not self.cuda:
            t0 = time.perf_counter()
            for _ in range(self.calls):
                self.fn()
            return (time.perf_counter() - t0) / self.calls
        with torch.cuda.device(self.device):
            if self._graph is not None:
                t = self._replay(self._graph)
                if self._flush_graph is not None:
                    t -= self._replay(self._flush_graph)
                return max(t, 0.0) / self.calls
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.calls)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.calls)]
            for s, e in zip(starts, ends):
                if self.flush_l2:
                    self._buf.zero_()
                s.record()
                self.fn()
                e.record()
            ends[-1].synchronize()
            return sum(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1e3 / self.calls

    @staticmethod
    def _replay(g: torch.cuda.CUDAGraph) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        return _elapsed_s(start, end)

    def timing(self, rounds_s: list) -> Timing:
        return Timing(list(rounds_s), self.method, self.calls, self.flush_l2, self.note)

    def close(self) -> None:
        """Drop the graphs (and their private memory pools)."""
        self._graph = self._flush_graph = None
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()


def time_op(fn: Callable[[], object], device, *, rounds: int = 20, **kw) -> Timing:
    """Median per-call time of ``fn`` over ``rounds`` rounds; see :class:`OpTimer`."""
    timer = OpTimer(fn, device, **kw)
    try:
        return timer.timing([timer.round() for _ in range(max(1, rounds))])
    finally:
        timer.close()


@dataclass(frozen=True)
class Ceilings:
    """What this GPU reaches on plain work, measured in this process.

    ``bandwidth`` in bytes/s of a device-to-device copy of a float32 tensor (bytes read
    plus bytes written; the best of the ways in ``copy_TBps_by_way``);
    ``matmul`` in flop/s of a bf16 ``n x n x n`` matrix product on random data.
    """

    bandwidth: float
    matmul: float
    copy_bytes: int
    matmul_n: int
    device: str
    copy_TBps_by_way: Optional[dict] = None

    def as_dict(self) -> dict:
        return {"copy_TBps": self.bandwidth / 1e12, "bf16_matmul_TFLOPs": self.matmul / 1e12,
                "copy_bytes_each_way": self.copy_bytes, "matmul_n": self.matmul_n, "device": self.device,
                "copy_TBps_by_way": self.copy_TBps_by_way}


_ceilings: dict = {}


def ceilings(device=None, *, copy_bytes: int = 2**30, matmul_n: int = 8192) -> Optional[Ceilings]:
    """Copy bandwidth and bf16 matmul rate of a CUDA device, measured once per process.

    None on a machine without CUDA (no roofline there).
    """
    if not torch.cuda.is_available():
        return None
    dev = torch.device(device if device is not None else f"cuda:{torch.cuda.current_device()}")
    key = (str(dev), copy_bytes, matmul_n)
    if key in _ceilings:
        return _ceilings[key]
    with torch.cuda.device(dev):
        src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=dev).uniform_()
        dst = torch.empty_like(src)
        # The best of three ways to stream the same bytes. A plain copy_ captured in a CUDA
        # graph becomes a memcpy node, which can run on a copy engine below HBM bandwidth
        # (2.77 TB/s on an H200 whose kernels read ~4 TB/s); timed with events outside a
        # graph it runs as a kernel; neg() is an SM kernel either way.
        ways = {
            "copy_graph": lambda: time_op(lambda: dst.copy_(src), dev, flush_l2=False),
            "copy_events": lambda: time_op(lambda: dst.copy_(src), dev, flush_l2=False, use_graph=False),
            "neg_graph": lambda: time_op(lambda: torch.neg(src, out=dst), dev, flush_l2=False),
        }
        copy_tbps = {k: 2 * copy_bytes / f().median_s / 1e12 for k, f in ways.items()}
        del src, dst
        g = torch.Generator(device=dev).manual_seed(0)
        a = torch.randn(matmul_n, matmul_n, device=dev, dtype=torch.bfloat16, generator=g)
        b = torch.randn(matmul_n, matmul_n, device=dev, dtype=torch.bfloat16, generator=g)
        c = torch.empty_like(a)
        t_mm = time_op(lambda: torch.matmul(a, b, out=c), dev, flush_l2=False).median_s
        del a, b, c
        torch.cuda.empty_cache()
    result = Ceilings(bandwidth=max(copy_tbps.values()) * 1e12, matmul=2 * matmul_n**3 / t_mm,
                      copy_bytes=copy_bytes, matmul_n=matmul_n, device=str(dev), copy_TBps_by_way=copy_tbps)
    _ceilings[key] = result
    return result

