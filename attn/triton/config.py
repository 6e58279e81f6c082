"""Launch heuristics of the Triton kernels, computed from shapes alone (no device reads).

Every choice here depends only on host ints (shapes, the table's host-side facts, the SM
count), so a launch does no host synchronisation and can be captured in a CUDA graph.
:func:`forced` overrides the choices; the tests use it to drive the split-K and row-tiling
paths on small inputs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Optional

import torch

_FORCE: dict = {}


@contextlib.contextmanager
def forced(**kw):
    """Override heuristics inside a ``with`` block.

    Keys: ``prefix_split`` / ``suffix_split`` (tokens per split of the level-form phases),
    ``block_m`` (stacked rows per tile of the shared phases), ``chunks_per_item`` (shared
    chunks per chunk-first work item), ``private_split`` (private chunks per split of the
    sequence-first phase), ``shared_block_n`` / ``shared_warps`` / ``shared_stages`` and
    ``decode_block_n`` / ``decode_warps`` / ``decode_stages`` / ``shared_maxnreg`` /
    ``decode_maxnreg`` (tiles), ``contiguous=False``
    (chunk kernels: never take the consecutive-chunk-id path), ``overlap`` (run the phases
    of an op concurrently on streams and merge, or in order and fold), ``prefix_min_split``
    (:func:`prefix_min_split`), ``fit_stages=False`` (:func:`fit_stages`), ``fold_kv_heads``
    (:func:`fold_kv_heads`), ``half_partials=False`` (:func:`partial_dtype`),
    ``leaf_suffix`` (:func:`leaf_with_suffix`), ``tma`` (:func:`use_tma`), ``launch_order`` (indices: the order in which
    an op's phases are launched; the tests check that no result depends on it).
    """
    old = dict(_FORCE)
    _FORCE.update(kw)
    try:
        yield
    finally:
        _FORCE.clear()
        _FORCE.update(old)


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device: torch.device) -> int:
    """Programs one launch should have to fill the GPU (one per SM is one wave).

    The interpreter runs programs one after another, so there the target is 1: no split
    unless a test forces one.
    """
    if device.type != "cuda" or interpreting():
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


@dataclass(frozen=True)
class Tiles:
    """Tile shape and launch parameters of one kernel launch."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    max_regs: Optional[int] = None  # ptxas register cap per thread (None: its own choice)

    def launch_options(self) -> dict:
        """The compile options of a launch with these tiles (``kernel[grid](..., **opts)``)."""
        opts = dict(num_warps=self.num_warps, num_stages=self.num_stages)
        if self.max_regs is not None:
            opts["maxnreg"] = self.max_regs
        return opts


def _tiles(prefix: str, bm: int, bn: int, warps: int, stages: int, regs: Optional[int] = None) -> Tiles:
    return Tiles(bm, _FORCE.get(prefix + "block_n", bn), _FORCE.get(prefix + "warps", warps),
                 _FORCE.get(prefix + "stages", stages), _FORCE.get(prefix + "maxnreg", regs))


def overlap_phases(phases: int, device: torch.device) -> bool:
    """Whether the ``phases`` launches of one op run concurrently on streams (then a merge
    kernel combines them) instead of in order (then the last folds the others in).

    On a GPU with several phases, yes; ``forced(overlap=...)`` decides for the tests (the
    interpreter runs the overlapped plan in order) and for the sweep.
    """
    if phases <= 1:
        return False
    if "overlap" in _FORCE:
        return bool(_FORCE["overlap"])
    return device.type == "cuda" and not interpreting()


def launch_order(count: int) -> list:
    """The order in which an op's ``count`` overlapped launches start: the first (the first
    prefix level: the longest-running), then the last (a tree's leaves with their suffixes,
    the most bytes), then the others.

    A third launch may find no room until the first two's CTAs end (H100 timelines of
    tree-3level: it started 16-21 µs in for ``chunk`` in plan order and for ``shared_prefix``
    in this one), so the launch that goes third should have the least work: the middle
    level. tree-3level ``shared_prefix`` 43.5 -> 43.0-43.1 µs, ``chunk`` 47.3-47.9 -> 46.7-47.1
    (H100, bf16, ``bench/triton_gpu_check.py --variants tree-3level --which overlap
    in-plan-order``, a process each; ``logs/0030``). ``forced(launch_order=...)`` overrides it
    when it names every launch.
    """
    order = _FORCE.get("launch_order")
    if order is not None and sorted(order) == list(range(count)):
        return list(order)
    return list(range(count)) if count < 3 else [0, count - 1, *range(1, count - 1)]


def use_tma(device: torch.device, dtype: torch.dtype, kind: str = "prefix", overlap: bool = False,
            suffix_critical: bool = True, masked: bool = False) -> bool:
    """Whether a launch of ``kind`` (``prefix``, ``suffix`` or ``leaf+suffix``, as in
    ``shared_prefix.plan``; chunk-first launches are prefix levels, or leaves when their
    items take private chunks, and the sequence-first launch is a suffix) reads its key
    blocks with the tensor memory accelerator (``segment.tma_descriptor``; layouts it cannot
    describe keep pointers): on Hopper and later, for 16-bit inputs, the prefix levels, and
    a suffix overlapped with them when it is the longer phase (:func:`suffix_critical`) and
    its blocks need no key mask (``masked``: ragged lengths, partial chunks or blocks).

    With TMA the kernels need fewer registers (128-row prefix 167 -> 138, a 16-row suffix
    tile with lengths 255 -> 146; Triton 3.6, sm_90a), so a suffix CTA shares an SM with a
    prefix CTA more easily: a faster suffix, at the cost of the prefix beside it. H100, bf16,
    a process per variant (``bench/triton_gpu_check.py --variants --ops OP --which ptr
    tma-prefix tma-suffix tma-leaf overlap``; ``logs/0032``), pointers -> descriptors:
    gqa-8b ``shared_prefix`` 136.7 -> 129.3 µs and ``chunk`` 144.3 -> 124.1, hydragen-mqa
    68.9 -> 66.1 and 71.4 -> 66.4. gqa-8b-long, whose prefix is the longer phase, lost with
    a descriptor suffix (101.8 -> 103.1, 97.5 -> 103.5); a suffix alone (no-share) lost 1-2 %,
    a tree's leaves 1 %. A masked suffix lost 7-14 % (ragged suffixes, run 0009's gate; H100
    bf16 ``--variants <w>-ragged --which ptr tma-prefix overlap``, ``logs/0034``: chunkattn-mha
    61.2 -> 69.8 µs, hydragen-mqa 73.3 -> 83.7, gqa-8b 149.1 -> 167.8, ``chunk`` 60.8 -> 66.2,
    64.2 -> 68.7, 128.5 -> 139.0; the prefix by descriptor alone within 1 %).
    ``forced(tma=...)`` decides: a bool for every kind, or the kinds that use it (the
    interpreter runs descriptors too).
    """
    if dtype not in (torch.float16, torch.bfloat16):
        return False
    if "tma" in _FORCE:
        f = _FORCE["tma"]
        return kind in f if isinstance(f, (tuple, list, set, frozenset)) else bool(f)
    return (wants_tma(kind, overlap, suffix_critical, masked)
            and device.type == "cuda" and not interpreting() and _capability(device)[0] >= 9)


def wants_tma(kind: str, overlap: bool, suffix_critical: bool, masked: bool) -> bool:
    """The default of :func:`use_tma` on Hopper, by launch: the prefix levels always; a
    suffix only overlapped, the longer phase and unmasked; a tree's leaves never."""
    if kind == "prefix":
        return True
    return kind == "suffix" and overlap and suffix_critical and not masked


# Flops per byte where an H100's bf16 tensor rate (~700 TFLOP/s measured) meets its HBM
# copy rate (~3.0 TB/s measured): the ridge of the roofline.
RIDGE_FLOP_PER_BYTE = 230


def suffix_critical(prefix_flops: float, suffix_bytes: float) -> bool:
    """Whether a suffix phase takes longer than the prefix levels beside it, each at its
    roofline: the suffix's K/V bytes at the HBM rate against the prefix's flops at the
    tensor rate. Then the suffix is the op's critical path and worth speeding up at the
    prefix's cost (gqa-8b, hydragen-mqa, chunkattn-mha), else not (gqa-8b-long)."""
    return suffix_bytes * RIDGE_FLOP_PER_BYTE > prefix_flops


@functools.lru_cache(maxsize=None)
def _cap(index: int) -> tuple:
    return torch.cuda.get_device_capability(index)


def _capability(device: torch.device) -> tuple:
    return _cap(device.index if device.index is not None else torch.cuda.current_device())


def prefix_min_split(overlap: bool) -> int:
    """Fewest keys per split of a prefix level. Run alone, a level is split down to 256 keys
    to fill the GPU; overlapped, the other phases fill it, and every split costs a partial
    state written and merged: 1024 keys took tree-3level from 56.7 to 44.5 µs and left
    gqa-8b and hydragen-mqa unchanged (H100, bf16; ``bench/triton_gpu_check.py --variants``;
    ``forced(prefix_min_split=...)`` overrides)."""
    return _FORCE.get("prefix_min_split", 1024 if overlap else 256)


def shared_tiles(rows: int, d: int, dtype: torch.dtype, device: torch.device, overlap: bool = False) -> Tiles:
    """Tiles of the stacked-query phases (prefix levels, chunk-first).

    Many stacked rows make the phase compute-bound: 128-row tiles with 8 warps, as
    FlashAttention-2 on Hopper, and 3 pipeline stages (measured on an H200, bf16, D = 128:
    128 x 128 x 3 stages beat 128 x 64 x 2 stages by 1.5x; see notes/triton.md). Few rows
    (small groups) would waste most of a 128-row tile, so the tile shrinks to the rows
    (never below 16, the smallest ``tl.dot`` M). float32 tiles are twice the bytes: smaller
    key blocks and 2 stages keep them in shared memory.
    """
    if "block_m" in _FORCE:
        bm = _FORCE["block_m"]
    elif device.type != "cuda" or interpreting():
        bm = min(32, max(16, next_pow2(rows)))
    else:
        bm = min(128, max(16, next_pow2(rows)))
    if device.type != "cuda" or interpreting():
        return _tiles("shared_", bm, 32, 4, 1)
    warps = 8 if bm >= 128 else 4
    if dtype == torch.float32:
        return _tiles("shared_", bm, 32, warps, 2)
    # Overlapped with a decode phase, 64-key blocks leave half of the shared memory to the
    # decode CTAs on the same SM (128-key blocks x 3 stages fill it alone).
    wide = bm >= 128 and d >= 128 and not overlap
    return _tiles("shared_", bm, 128 if wide else 64, warps, 3)


def decode_tiles(ratio: int, d: int, dtype: torch.dtype, device: torch.device, overlap: bool = False,
                 keys: int = 0) -> Tiles:
    """Tiles of the per-sequence phases (suffix, sequence-first): one sequence's GQA group
    of ``ratio`` query heads, padded to 16 rows, streaming keys in blocks of 64 through 4
    pipeline stages (the best of the H200 sweep on the memory-bound no-share workload).

    Overlapped with a prefix phase: 2 stages, so that a decode CTA fits beside a prefix CTA,
    and 128-key blocks for suffixes of ``keys >= 256`` (H100, bf16: gqa-8b 151 -> 143 µs,
    hydragen-mqa 75 -> 72 µs; a 64-key suffix (tree-3level) would waste half of each block).
    """
    bm = max(16, next_pow2(ratio))
    if device.type != "cuda" or interpreting():
        return _tiles("decode_", bm, 32, 4, 1)
    if dtype == torch.float32:
        return _tiles("decode_", bm, 32, 4, 3)
    if overlap:
        return _tiles("decode_", bm, 128 if keys >= 256 else 64, 4, 2)
    return _tiles("decode_", bm, 64, 4, 4)


def fit_stages(tiles: Tiles, blocks: int) -> Tiles:
    """``tiles`` with no more pipeline stages than the ``blocks`` key blocks a program walks.

    A stage is a K/V buffer in shared memory: the pipeliner keeps ``stages - 1`` blocks in
    flight, so a program of ``blocks`` blocks has them all in flight with ``blocks`` stages,
    and more only take the shared memory that other CTAs could use. On a tree the leaves
    (128 keys) and the suffixes (64 keys) are such programs: with one or two stages 3-7 of
    them fit on an SM instead of 2-3. ``forced(fit_stages=False)`` keeps the stages.
    """
    if not _FORCE.get("fit_stages", True) or any(k.endswith("stages") for k in _FORCE):
        return tiles
    return dataclasses.replace(tiles, num_stages=max(1, min(tiles.num_stages, blocks)))


def fold_kv_heads(num_kv_heads: int, ratio: int) -> int:
    """KV heads per program of a per-sequence merge: the most ``g`` dividing ``num_kv_heads``
    with ``g * ratio <= 16`` (at least 1), so a 16-row tile holds 16 real rows when it can.
    ``forced(fold_kv_heads=g)`` overrides (1: one GQA group per program)."""
    if "fold_kv_heads" in _FORCE:
        return _FORCE["fold_kv_heads"]
    g = max(1, 16 // max(1, ratio))
    while num_kv_heads % g:
        g -= 1
    return g


def slots(tiles: Tiles, device: torch.device) -> int:
    """Programs that run at once: one per SM for 8-warp tiles (they fill the register file),
    two for the smaller ones."""
    sms = target_programs(device)
    return sms if sms == 1 or tiles.num_warps >= 8 else 2 * sms


def best_splits(base_programs: int, max_splits: int, slot_count: int) -> int:
    """Splits ``s <= max_splits`` whose ``base_programs * s`` programs waste the least of
    their last wave; fewer splits unless more gain over 2 %.

    A grid of 1.1 waves runs as long as one of 2 waves: the number of programs matters as
    much as their count being large.
    """
    if slot_count <= 1:
        return 1
    best, best_eff = 1, 0.0
    for s in range(1, max(1, max_splits) + 1):
        progs = base_programs * s
        waves = cdiv(progs, slot_count)
        eff = progs / (waves * slot_count)
        if eff > best_eff + 0.02:
            best, best_eff = s, eff
        if waves >= 4:
            break
    return best


def num_splits(length: int, base_programs: int, tiles: Tiles, device: torch.device, key,
               min_split: int = 256) -> tuple[int, int]:
    """``(splits, split_len)`` cutting ``length`` keys so that ``base_programs * splits``
    programs fill the GPU's waves; each split is a multiple of the key block and non-empty.
    ``key`` names the :func:`forced` override of ``split_len`` (None: no override).

    Splits shorter than ``min_split`` keys would cost more in partial states written and
    merged than they gain in parallelism.
    """
    bn = tiles.block_n
    if length <= 0:
        return 0, bn
    if key in _FORCE:
        split_len = _FORCE[key]
    else:
        want = best_splits(base_programs, cdiv(length, min_split), slots(tiles, device))
        split_len = cdiv(length, want)
    split_len = cdiv(split_len, bn) * bn
    return cdiv(length, split_len), split_len


def partial_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the normalised partial outputs that phases write for the merge (their LSEs
    are always float32): the input's half dtype, as FlashInfer's cascade merges
    half-precision states, at half the bytes of float32 (float32 inputs keep float32).
    H100, bf16 (``bench/triton_gpu_check.py --variants --which overlap hp``, with the
    store's row addressing built after the key loop, :func:`tile.late`): hydragen-mqa
    72.3 -> 68.7 µs, gqa-8b 142 -> 136.5, tree-3level 51.5 -> 49.4, the others within 1 %;
    the float64 oracle's errors stay ~10x under the bound. ``forced(half_partials=False)``
    keeps float32.
    """
    if _FORCE.get("half_partials", True) and dtype in (torch.float16, torch.bfloat16):
        return dtype
    return torch.float32


def leaf_with_suffix(levels: int, rows: int, leaf_tiles: Tiles, leaf_splits: int, suffix_splits: int) -> bool:
    """Whether the deepest of ``levels >= 2`` prefix levels and the suffixes run as one launch, each
    program walking its group's leaf keys and then each of its sequences' suffix keys: when a
    group's ``rows`` fit one tile of at most 16 rows (a tree's leaves: few sequences each) and
    neither phase is split. Otherwise the suffix launch waits for SMs until the long prefix
    levels end (H100 timeline of tree-3level: it started 18.7 µs in, as the root ended).
    ``forced(leaf_suffix=...)`` decides."""
    if "leaf_suffix" in _FORCE:
        return bool(_FORCE["leaf_suffix"]) and leaf_splits == 1 and suffix_splits == 1
    return levels >= 2 and rows <= min(16, leaf_tiles.block_m) and leaf_splits == 1 and suffix_splits == 1


def forced_items() -> tuple:
    """The overrides in force, hashable: part of the cache key of plans built under them."""
    return tuple(sorted(_FORCE.items()))


def forced_value(key: str, default):
    return _FORCE.get(key, default)
