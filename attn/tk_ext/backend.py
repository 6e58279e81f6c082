"""The ``tk`` backend: ThunderKittens kernels (Hopper wgmma + TMA), built on first use.

Each op is one launch of the stacked-query kernel over a table of work items (see
:mod:`attn.tk_ext.plan`) writing partial states (:func:`partial_dtype`), then one merge launch; when every
row is in one item (decode with nothing shared), the items write the result directly and
there is no merge (:func:`plan.mark_direct`). Item tables
are built on the host once per shape (shared prefix) or once per ChunkTable, and cached on
the device, so a call does no host synchronisation and can be captured in a CUDA graph.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..env import getenv
from ..backend import Backend
from ..problems import ChunkProblem, MergeProblem, SharedPrefixProblem
from . import build, decode_streams, plan, schedule, unit_queue

# A launch without CTA heads (use_heads): the kernel reads its tables.
_NO_HEADS = torch.zeros(0, schedule.HEAD_INTS, dtype=torch.int32)

#: prefix levels + the suffix that one launch takes (kernel parameter space).
MAX_SOURCES = 6


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0


def prep_kv(t: torch.Tensor) -> torch.Tensor:
    """``t`` as TMA needs it: contiguous, 16-byte aligned (copied only when it is not)."""
    if t.is_contiguous() and _aligned(t):
        return t
    return t.contiguous() if not t.is_contiguous() else t.clone()


def prep_q(q: torch.Tensor) -> torch.Tensor:
    """``q [B, Hq, D]`` as the kernels' 16-byte row loads need it (strides in multiples of 8)."""
    if q.stride(2) == 1 and q.stride(0) % 8 == 0 and q.stride(1) % 8 == 0 and _aligned(q):
        return q
    return q.contiguous() if not q.is_contiguous() else q.clone()


def mixed_order() -> bool:
    """Whether half of the persistent CTAs run their items shortest first
    (:func:`schedule.assign_ctas`); ``ATTN_TK_ORDER=lpt`` turns it off (read when a plan is built,
    and part of the plan's cache key, so that a benchmark can time both orders)."""
    return getenv("ATTN_TK_ORDER", "mixed") != "lpt"


def rebalance() -> bool:
    """Whether :func:`schedule.assign_ctas` lowers the largest CTA load after LPT
    (``ATTN_TK_REBALANCE=1``; off by default until a GPU benchmark says so). Read when a plan
    is built and part of the plan's cache key, so that a benchmark can time both."""
    return getenv("ATTN_TK_REBALANCE", "0") == "1"


def unpair_tail() -> bool:
    """Whether :meth:`TKBackend._best_split` also tries plans with their last pairs left as
    lone items (:func:`schedule.unpair_last`; ``ATTN_TK_UNPAIR``, default ``1``; ``0`` keeps
    every pair). The plan's costs predict tree-3level 2.4 %, gqa-8b 2.1 % and gqa-8b-long
    1.3 % lower largest CTA loads on 132 SMs; on an H200 (runs 0095 vs 0091, 0098 vs 0096)
    gqa-8b became 0.7-1.9 % and gqa-8b-long 0.4-2.1 % faster, the rest within 1.1 %. Read when
    a plan is built, and part of the plan's cache key."""
    return getenv("ATTN_TK_UNPAIR", "1") == "1"


def _pair_cap(name: str, default: int) -> int:
    value = getenv(name, str(default))
    try:
        n = int(value)
    except ValueError:
        n = -2
    if n < -1:
        raise ValueError(f"{name}={value!r}: expected an integer >= -1 (-1: no limit, 0: no pairs)")
    return n


def pair_caps() -> tuple[int, int]:
    """``(max_tiles, max_rows)`` of the kv-split items that :func:`schedule.pair_kv_items` pairs:
    ``ATTN_TK_PAIR_TILES`` and ``ATTN_TK_PAIR_ROWS`` (default ``schedule.PAIR_MAX_TILES``,
    ``schedule.PAIR_MAX_ROWS``; -1: no limit; 0 turns pairs off). Read when a plan is built and
    part of the plan's cache key, so that a benchmark can time several."""
    return (_pair_cap("ATTN_TK_PAIR_TILES", schedule.PAIR_MAX_TILES),
            _pair_cap("ATTN_TK_PAIR_ROWS", schedule.PAIR_MAX_ROWS))


# Switches without an entry of their own in versions() (README, "Tuning the tk backend"), named by
# ``python -m attn info`` when set.
TUNING_SWITCHES = ("ATTN_TK_SCHED", "ATTN_TK_PARTIALS", "ATTN_TK_LSE_FILL", "ATTN_TK_MERGE", "ATTN_TK_ORDER",
                   "ATTN_TK_UNPAIR", "ATTN_TK_HEADS", "ATTN_TK_DECODE_WG", "ATTN_TK_SOLO_COSTS", "ATTN_TK_DWG_SLOWDOWN",
                   "ATTN_TK_DWG_MARGIN", "ATTN_TK_QUEUE", "ATTN_TK_WALK")
# The values each switch takes (the kernels read SCHED and MERGE themselves and would take any
# other value as the default, so a typo would time the default unnoticed).
SWITCH_VALUES = {"ATTN_TK_SCHED": ("pingpong", "pipeline", "serial"), "ATTN_TK_PARTIALS": ("half", "float32"),
                 "ATTN_TK_LSE_FILL": ("0", "1"), "ATTN_TK_MERGE": ("v8", "v4"), "ATTN_TK_ORDER": ("mixed", "lpt"),
                 "ATTN_TK_REBALANCE": ("0", "1"), "ATTN_TK_UNPAIR": ("0", "1"), "ATTN_TK_HEADS": ("0", "1"),
                 "ATTN_TK_DECODE_WG": ("auto", "0", "1"), "ATTN_TK_QUEUE": ("0", "1"),
                 "ATTN_TK_WALK": ("0", "1")}


def check_switches() -> None:
    """Raise ``ValueError`` naming a set switch of :data:`SWITCH_VALUES` with a value it does
    not take (before any launch of an op)."""
    for name, values in SWITCH_VALUES.items():
        value = getenv(name)
        if value and value not in values:
            raise ValueError(f"{name}={value!r}: expected one of {', '.join(values)}")


def split_factors() -> tuple:
    """The split factors (:func:`plan.split_cap`) a plan is chosen from: ``ATTN_TK_SPLIT_FACTOR``
    alone when set (read at import), else :data:`plan.AUTO_SPLIT_FACTORS`."""
    if getenv("ATTN_TK_SPLIT_FACTOR"):
        return (plan.SPLIT_FACTOR,)
    return plan.AUTO_SPLIT_FACTORS


def decode_wg_mode() -> str:
    """Which kernel form a plan launches on (``ATTN_TK_DECODE_WG``, read when a plan is built and
    part of its cache key). ``auto`` (default): the form with the decode warpgroup (its CTAs
    run their solo decode items on a third warpgroup beside the prefix items:
    :mod:`attn.tk_ext.decode_streams`) where its predicted time
    (:func:`decode_streams.contended_loads`) beats the one-list plan's by
    :data:`decode_streams.DWG_MARGIN` (``ATTN_TK_DWG_MARGIN``); ``1``: that form wherever a
    plan has solo items; ``0``: never. H200 (runs 0153 / 0154): gqa-8b 5.6-9.3 % faster with
    it, tree-3level up to 15 % slower, the rest -5 .. +6 %; ``auto`` picks it for gqa-8b (runs
    0155 / 0156: 6.2-10.1 % faster than ``0``, the rest within 0.8 %) and hydragen-mqa-ragged's
    chunk op (runs 0199 / 0200: 5.6 % faster, the rest within 0.3 %)."""
    return getenv("ATTN_TK_DECODE_WG", "auto")


def walk_suffixes() -> bool:
    """Whether shared-prefix plans let a tree's leaf items walk their sequences' suffixes
    (:func:`plan.walk_suffixes`; ``ATTN_TK_WALK``, default ``1``; ``0``: a suffix item per
    sequence). H100 (runs 0020 / 0021): tree-3level ``shared_prefix`` 45.4 -> 43.5 us, ragged
    45.4 -> 43.4, no other workload walks. Read when a plan is built, and part of its cache key."""
    return getenv("ATTN_TK_WALK", "1") == "1"


def use_heads() -> bool:
    """Whether each launch passes the CTAs' heads (:func:`schedule.cta_heads`: item ranges and
    first units) in the kernel's parameters; ``ATTN_TK_HEADS=0`` has the kernel read them from
    the plan's tables (read at each call, so that a benchmark can time both)."""
    return getenv("ATTN_TK_HEADS", "1") != "0"


def lse_fill() -> bool:
    """``ATTN_TK_LSE_FILL=1``: fill the partial lses with ``-inf`` before every launch even
    when the plan's items write them all (read at each call, so that a benchmark can time
    both)."""
    return getenv("ATTN_TK_LSE_FILL", "0") == "1"


def partial_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the partial outs the items write for the merge (their LSEs are float32): the
    op's dtype, half the bytes of float32 written and reread (the Triton backend does the
    same, as FlashInfer's cascade merges half-precision states); ``ATTN_TK_PARTIALS=float32``
    keeps float32 (read at each call, so that a benchmark can time both)."""
    return torch.float32 if getenv("ATTN_TK_PARTIALS", "half") == "float32" else dtype


def num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


class TKBackend(Backend):
    """ThunderKittens CUDA-extension kernels for H100-class GPUs (sm_90a)."""

    name = "tk"
    dtypes = frozenset({torch.bfloat16, torch.float16})
    head_dims = frozenset({64, 128})
    device_types = frozenset({"cuda"})
    max_gqa_ratio = 16
    chunk_sizes = (1, 1024)

    def __init__(self):
        self._plans: dict = {}
        self._sms: dict = {}
        self._counters = unit_queue.Counters()

    # ---- availability -------------------------------------------------------------
    def unavailable_reasons(self) -> list[str]:
        if build._module is not None:
            return []
        return build.unavailable_reasons()

    def versions(self) -> dict:
        root = build.tk_root()
        v = {"ThunderKittens": f"{root} (written for {build.TK_COMMIT[:12]})" if root else "not found",
             "nvcc": build.nvcc_path() or "not found"}
        extra = build.nvcc_flags()[len(build.NVCC_FLAGS):]
        if extra:  # a developer build (ATTN_TK_NVCC_FLAGS): say so where users look first
            v["extra nvcc flags"] = " ".join(extra)
        if build.csrc_dir() != build.CSRC:  # ATTN_TK_CSRC: kernels from another source tree
            v["kernel sources"] = str(build.csrc_dir())
        if os.environ.get("ATTN_TK_PAIR_TILES") or os.environ.get("ATTN_TK_PAIR_ROWS"):
            v["pairs of kv-split items (max tiles, rows)"] = ", ".join(map(str, pair_caps()))
        if rebalance():
            v["schedule"] = "LPT, then rebalanced (ATTN_TK_REBALANCE=1)"
        if os.environ.get("ATTN_TK_SPLIT_FACTOR"):  # a tuning run, as below
            v["plan split factor (items per CTA share)"] = f"{plan.SPLIT_FACTOR:g} (not chosen per plan)"
        if os.environ.get("ATTN_TK_PLAN_COSTS"):  # a tuning run: the plans' costs are not the measured ones
            costs = (plan.ROW_TILE_COST, plan.KV_TILE_COST, plan.ITEM_OVERHEAD, plan.PAIR_TILE_COST,
                     plan.PAIR_OVERHEAD)
            v["plan costs (row, kv, item, pair tile, pair item)"] = ", ".join(f"{c:g}" for c in costs)
        set_env = [f"{k}={os.environ[k]}" for k in TUNING_SWITCHES if os.environ.get(k)]
        if set_env:  # timing switches a benchmark may have left set
            v["tuning switches"] = " ".join(set_env)
        return v

    def not_supported_reasons(self, problem) -> list[str]:
        reasons = super().not_supported_reasons(problem)
        if isinstance(problem, SharedPrefixProblem):
            nsrc = len(problem.prefix_k) + (1 if problem.suffix_capacity > 0 else 0)
            if nsrc > MAX_SOURCES:
                reasons.append(f"{len(problem.prefix_k)} prefix levels plus a suffix exceed the {MAX_SOURCES} "
                               "K/V sources one tk launch takes")
        if isinstance(problem, MergeProblem) and problem.outs.dim() < 2:
            reasons.append("merge_states needs outs [K, ..., D]")
        return reasons

    def _ext(self):
        return build.load()

    def _num_sms(self, device) -> int:
        idx = device.index if device.index is not None else torch.cuda.current_device()
        if idx not in self._sms:
            self._sms[idx] = num_sms(torch.device("cuda", idx))
        return self._sms[idx]

    # ---- ops ----------------------------------------------------------------------
    @staticmethod
    def _schedule_key() -> tuple:
        """The environment's part of a plan's cache key (what :meth:`_place` and
        :meth:`_best_split` read)."""
        return (mixed_order(), pair_caps(), rebalance(), split_factors(), unpair_tail(), decode_wg_mode(),
                getenv("ATTN_TK_SOLO_COSTS"), getenv("ATTN_TK_DWG_SLOWDOWN"),
                getenv("ATTN_TK_DWG_MARGIN"), unit_queue.enabled(), walk_suffixes())

    def _best_form(self, make, num_seqs: int, hkv: int, r: int, device):
        """The placed plan of :meth:`_best_split` in the kernel form :func:`decode_wg_mode`
        picks: ``(items, ctas, direct, covered, nslot, extra, dwg)``, ``dwg`` whether it is a
        two-list plan for the decode-warpgroup kernels (only ever one with solo items)."""
        decode_streams.check_env()  # on every plan build, whichever form and path it takes
        mode = decode_wg_mode()
        made: dict = {}  # make(factor) once for both forms (its arrays are only ever copied downstream)

        def make_once(f):
            if f not in made:
                made[f] = make(f)
            return made[f]

        one = self._best_split(make_once, num_seqs, hkv, r, device)
        # A direct plan has no split decode items to take apart; a walking one's small items are
        # its walked leaves, which the decode-warpgroup form does not run (it has no WALK kernels).
        if mode == "0" or one[2] or (one[0][:, plan.F_WALK] != 0).any():
            return one + (False,)
        two = self._best_split(make_once, num_seqs, hkv, r, device, dwg=True)
        if two[2] or not (two[0][:, plan.F_FLAGS] & plan.FLAG_SOLO).any():
            return one + (False,)
        if mode == "1":
            return two + (True,)
        with_dwg = float(decode_streams.contended_loads(two[0], two[1]).max())
        without = self._max_load(one)
        margin = decode_streams.margin_from_env(os.environ.get("ATTN_TK_DWG_MARGIN"))
        return two + (True,) if with_dwg < without * (1 - margin) else one + (False,)

    def _best_split(self, make, num_seqs: int, hkv: int, r: int, device, dwg: bool = False):
        """The placed plan (:meth:`_place`) of the best of :func:`split_factors`.

        ``make(factor)`` gives ``(items, nslot, extra)``. Each candidate is placed and its
        largest CTA load predicted with the plan's costs (:func:`schedule.planned_loads`); of
        those within :data:`plan.SPLIT_TOLERANCE` of the smallest, the one with the fewest
        partial slots to merge wins (a direct plan has none), then the earlier factor. With
        :func:`unpair_tail`, the winner is placed again with its last pairs left as lone items
        (:data:`schedule.UNPAIR_FRACTIONS` of the CTA count), and the placement with the
        smallest largest load is kept if it beats the paired one by more than the tolerance.

        ``dwg``: placed as two lists a CTA (:func:`decode_streams.assign_streams`), priced by
        :func:`decode_streams.planned_loads`.

        Returns ``(items, ctas, direct, covered, nslot, extra)``.
        """
        cands, seen = [], set()
        for pref, f in enumerate(split_factors()):
            items, nslot, extra = make(f)
            key = (items.tobytes(), nslot)
            if key in seen:  # the same splits as an earlier factor: the same placed plan
                continue
            seen.add(key)
            placed = self._place(items, nslot, num_seqs, hkv, r, device, dwg=dwg, clear=False)
            cands.append((self._max_load(placed, dwg), 0 if placed[2] else nslot, pref, placed + (nslot, extra), items))
        low = min(c[0] for c in cands)
        best = min(cands, key=lambda c: (c[0] > low * (1 + plan.SPLIT_TOLERANCE), c[1], c[2]))
        if not unpair_tail() or rebalance() or best[3][2] or dwg:
            return self._cleared(best[3], num_seqs, hkv, r)
        # The chosen splits with their last pairs as lone items: kept where that lowers the
        # largest planned CTA load (LPT's, before any other step) by more than the tolerance.
        paired = schedule.pair_kv_items(best[4], *pair_caps())
        npairs = int(np.count_nonzero(paired[:, plan.F_FLAGS] & plan.FLAG_PAIR))
        ctas = self._num_sms(device)
        load, pick = best[0] * (1 - plan.SPLIT_TOLERANCE), 0
        for k in sorted({min(npairs, max(1, round(x * ctas))) for x in schedule.UNPAIR_FRACTIONS} if npairs else ()):
            alt = schedule.lpt_max_load(schedule.unpair_last(paired, k), ctas)
            if alt < load:
                load, pick = alt, k
        if not pick:
            return self._cleared(best[3], num_seqs, hkv, r)
        return self._place(best[4], best[3][4], num_seqs, hkv, r, device, unpair=pick) + best[3][4:]

    @staticmethod
    def _cleared(placed, num_seqs: int, hkv: int, r: int):
        """A candidate of :meth:`_best_split` (placed with ``clear=False``) with its unwritten
        slots cleared and ``covered`` set: done for the winner only, as the flag changes no cost."""
        items, ctas, direct, _, nslot = placed[:5]
        items, covered = plan.clear_unwritten(items, nslot, num_seqs, hkv, r)
        return (items, ctas, direct, covered) + placed[4:]

    @staticmethod
    def _max_load(placed, dwg: bool = False) -> float:
        if dwg and not placed[2]:
            loads = decode_streams.planned_loads(placed[0], placed[1])
        else:
            loads = schedule.planned_loads(placed[0], placed[1])
        return float(loads.max()) if loads.size else 0.0

    def _place(self, items, nslot: int, num_seqs: int, hkv: int, r: int, device, unpair: int = 0,
               dwg: bool = False, clear: bool = True):
        """``(items, ctas, direct, covered)``: a plan's items marked direct where they can be,
        paired (but for the last ``unpair`` pairs), made to write every partial lse where they
        can (``covered``: no ``-inf`` fill needed; with ``clear=False`` that step is left out
        and ``covered`` is None), and scheduled on ``device``'s SMs; with ``dwg`` (and not
        direct) in two lists a CTA, solo items unpaired."""
        items, direct = plan.mark_direct(items, num_seqs, hkv, r)
        if dwg and not direct:  # the decode warpgroup's solo items, no pairs
            items, ctas, _ = decode_streams.assign_streams(items, self._num_sms(device))
        else:
            items = schedule.unpair_last(schedule.pair_kv_items(items, *pair_caps()), unpair)
            items, ctas = schedule.assign_ctas(items, self._num_sms(device), mixed_order(), rebalance())
        covered = None
        if clear:
            items, covered = plan.clear_unwritten(items, nslot, num_seqs, hkv, r)
        return items, ctas, direct, covered

    def placed_level_plan(self, batch: int, hq: int, hkv: int, levels, suffix: int, ragged: bool, device):
        """The host plan of a shared-prefix shape (:func:`plan.level_plan` at the best split,
        placed on ``device``'s SMs, in the kernel form :meth:`_best_form` picks):
        ``(items, ctas, direct, covered, nslot, None, dwg)`` as numpy.
        ``levels``: ``(groups, tokens)`` of each prefix level; ``ragged``: suffix lengths given."""
        walk = walk_suffixes()

        def make(f):
            return plan.level_plan(batch, hq, hkv, list(levels), suffix, ragged, self._num_sms(device), f,
                                   walk=walk) + (None,)

        return self._best_form(make, batch, hkv, hq // hkv, device)

    def level_items(self, p: SharedPrefixProblem):
        """The cached device item table, CTA ranges, slot count, directness, coverage
        (every partial lse written: :func:`plan.clear_unwritten`), CPU CTA heads
        (:func:`schedule.cta_heads`; none for a two-list plan), whether items walk suffixes
        (:func:`plan.walk_suffixes`), kernel form (``dwg``) and unit queue of ``p``'s shape."""
        levels = tuple((int(k.shape[0]), int(k.shape[1])) for k in p.prefix_k)
        key = (p.batch, p.num_q_heads, p.num_kv_heads, levels, p.suffix_capacity,
               p.suffix_lens is not None, str(p.device)) + self._schedule_key()
        hit = self._plans.get(key)
        if hit is None:
            items, ctas, direct, covered, nslot, _, dwg = self.placed_level_plan(
                p.batch, p.num_q_heads, p.num_kv_heads, levels, p.suffix_capacity, p.suffix_lens is not None, p.device)
            walk = bool((items[:, plan.F_WALK] != 0).any())
            items, ctas, heads, queue = self._launch_tables(items, ctas, dwg, p.device)
            hit = (torch.as_tensor(items).to(p.device), torch.as_tensor(ctas).to(p.device), nslot, direct, covered,
                   heads, walk, dwg, queue)
            self._plans[key] = hit
        return hit

    def _launch_tables(self, items, ctas, dwg: bool, device):
        """``(items, ctas, heads, queue)`` that a placed plan launches with: as placed, with CPU CTA
        heads (none for a two-list plan), and ``queue`` None; or with :func:`unit_queue.enabled`
        (plans without the decode warpgroup) in queue order, ``queue`` the device units and the
        front CTA count (:func:`unit_queue.queue_order`)."""
        if dwg:
            return items, ctas, _NO_HEADS, None
        if not unit_queue.enabled():
            return items, ctas, torch.as_tensor(schedule.cta_heads(items, ctas)), None
        items, ctas, units, front = unit_queue.queue_order(items, self._num_sms(device), mixed_order())
        heads = torch.as_tensor(unit_queue.queue_heads(items, ctas))
        return items, ctas, heads, (torch.as_tensor(units).to(device), front)

    def _queue_args(self, queue, device) -> tuple:
        """The launch's last three arguments: counter, units and front of its unit queue, or none."""
        if queue is None:
            return None, None, 0
        return self._counters.get(device), queue[0], queue[1]

    def run_shared_prefix(self, p: SharedPrefixProblem):
        check_switches()
        ext = self._ext()
        b, hq, d = p.q.shape
        ks = [prep_kv(k) for k in p.prefix_k]
        vs = [prep_kv(v) for v in p.prefix_v]
        if p.suffix_capacity > 0:
            ks.append(prep_kv(p.suffix_k))
            vs.append(prep_kv(p.suffix_v))
        if not ks or b == 0:
            return torch.zeros_like(p.q), torch.full((b, hq), float("-inf"), device=p.device)
        items, ctas, nslot, direct, covered, heads, walk, dwg, queue = self.level_items(p)
        q = prep_q(p.q)
        po, pl, out, lse = self._buffers(nslot, direct, covered, (b, hq, d), p.dtype, p.device)
        launch = ext.shared_prefix_partials_dwg if dwg else ext.shared_prefix_partials
        launch(q, ks, vs, p.suffix_lens, items, ctas, p.scale, po, pl, out, lse, heads if use_heads() else _NO_HEADS,
               *self._queue_args(queue, p.device), walk)
        return self._finish(ext, po, pl, out, lse, direct, (b, hq, d))

    def chunk_items(self, p: ChunkProblem):
        """The device item table, CTA ranges, chunk list, slot count, directness, coverage,
        CPU CTA heads and kernel form (``dwg``) of ``p.table`` (cached on it)."""
        cache = p.table.host.setdefault("tk", {})
        key = (p.num_q_heads, p.num_kv_heads, p.chunk_size, str(p.device)) + self._schedule_key()
        hit = cache.get(key)
        if hit is None:
            def make(f):
                items, clist, nslot = plan.chunk_plan(p.table.host, p.table.num_seqs, p.num_q_heads,
                                                      p.num_kv_heads, p.chunk_size, self._num_sms(p.device), f)
                return items, nslot, clist

            items, ctas, direct, covered, nslot, clist, dwg = self._best_form(
                make, p.table.num_seqs, p.num_kv_heads, p.num_q_heads // p.num_kv_heads, p.device)
            items, ctas, heads, queue = self._launch_tables(items, ctas, dwg, p.device)
            hit = (torch.as_tensor(items).to(p.device), torch.as_tensor(ctas).to(p.device),
                   torch.as_tensor(clist).to(p.device), nslot, direct, covered, heads, dwg, queue)
            cache[key] = hit
        return hit

    @staticmethod
    def chunk_tails(p: ChunkProblem) -> bool:
        """Whether a chunk of ``p.table`` is partial (rows past its length inside the pool, which
        the kernel must zero: it is compiled without that where none is; cached on the table)."""
        host = p.table.host
        if "tk_tails" not in host:
            host["tk_tails"] = bool((np.asarray(host["chunk_lens"]) < p.chunk_size).any())
        return host["tk_tails"]

    def run_chunk(self, p: ChunkProblem):
        check_switches()
        ext = self._ext()
        n, hq, d = p.q.shape
        items, ctas, clist, nslot, direct, covered, heads, dwg, queue = self.chunk_items(p)
        if n == 0 or nslot == 0 or items.shape[0] == 0:
            return torch.zeros_like(p.q), torch.full((n, hq), float("-inf"), device=p.device)
        q = prep_q(p.q)
        po, pl, out, lse = self._buffers(nslot, direct, covered, (n, hq, d), p.dtype, p.device)
        launch = ext.chunk_partials_dwg if dwg else ext.chunk_partials
        launch(q, prep_kv(p.k_chunks), prep_kv(p.v_chunks), clist, p.table.chunk_lens, self.chunk_tails(p),
               items, ctas, p.scale, po, pl, out, lse, heads if use_heads() else _NO_HEADS,
               *self._queue_args(queue, p.device))
        return self._finish(ext, po, pl, out, lse, direct, (n, hq, d))

    @staticmethod
    def _buffers(nslot, direct, covered, shape, dtype, device):
        """``(part_out, part_lse, out, lse)`` of one launch: a direct plan's items write
        ``out``/``lse`` and need no partial slots; a covered plan's items write every slot's
        lse; otherwise every slot's lse starts at ``-inf`` (a (slot, row) no item writes is
        skipped by the merge). :func:`lse_fill` forces the fill."""
        b, hq, d = shape
        out = torch.empty(b * hq, d, dtype=dtype, device=device)
        lse = torch.empty(b * hq, dtype=torch.float32, device=device)
        if direct:
            none = torch.empty(0, dtype=torch.float32, device=device)
            return none, none, out, lse
        po = torch.empty(nslot, b * hq, d, dtype=partial_dtype(dtype), device=device)
        if covered and not lse_fill():
            pl = torch.empty(nslot, b * hq, dtype=torch.float32, device=device)
        else:
            pl = torch.full((nslot, b * hq), float("-inf"), dtype=torch.float32, device=device)
        return po, pl, out, lse

    @staticmethod
    def _finish(ext, po, pl, out, lse, direct, shape):
        b, hq, d = shape
        if not direct:
            ext.merge(po, pl, out, lse)
        return out.view(b, hq, d), lse.view(b, hq)

    def run_merge(self, p: MergeProblem):
        check_switches()
        ext = self._ext()
        k, d = p.outs.shape[0], p.outs.shape[-1]
        rest = tuple(p.outs.shape[1:-1])
        outs = p.outs.reshape(k, -1, d).contiguous()
        lses = p.lses.to(torch.float32).reshape(k, -1).contiguous()
        out = torch.empty(outs.shape[1], d, dtype=p.dtype, device=p.device)
        lse = torch.empty(outs.shape[1], dtype=torch.float32, device=p.device)
        ext.merge(outs, lses, out, lse)
        return out.view(*rest, d), lse.view(rest)
