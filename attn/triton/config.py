"""Launch heuristics of the Triton kernels, computed from shapes alone (no device reads).

Every choice here depends only on host ints (shapes, the table's host-side facts, the SM
count), so a launch does no host synchronisation and can be captured in a CUDA graph.
:func:`forced` overrides the choices; the tests use it to drive the split-K and row-tiling
paths on small inputs.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

_FORCE: dict = {}


@contextlib.contextmanager
def forced(**kw):
    """Override heuristics inside a ``with`` block.

    Keys: ``prefix_split`` / ``suffix_split`` (tokens per split of the level-form phases),
    ``block_m`` (stacked rows per tile of the shared phases), ``chunks_per_item`` (shared
    chunks per chunk-first work item), ``private_split`` (private chunks per split of the
    sequence-first phase).
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


def shared_tiles(rows: int, d: int, device: torch.device) -> Tiles:
    """Tiles of the stacked-query phases (prefix levels, chunk-first).

    Many stacked rows make the phase compute-bound: 128 x 64 tiles with 8 warps, as
    FlashAttention-2 on Hopper. Few rows (small groups) would waste most of a 128-row tile,
    so the tile shrinks to the rows (never below 16, the smallest ``tl.dot`` M).
    """
    if "block_m" in _FORCE:
        bm = _FORCE["block_m"]
    elif device.type != "cuda" or interpreting():
        bm = min(32, max(16, next_pow2(rows)))
    else:
        bm = min(128, max(16, next_pow2(rows)))
    if device.type != "cuda" or interpreting():
        return Tiles(bm, 32, 4, 1)
    warps = 8 if bm >= 128 and d >= 128 else 4
    return Tiles(bm, 64, warps, 3 if d <= 64 or bm <= 64 else 2)


def decode_tiles(ratio: int, d: int, device: torch.device) -> Tiles:
    """Tiles of the per-sequence phases (suffix, sequence-first): one sequence's GQA group
    of ``ratio`` query heads, padded to 16 rows, streaming keys in blocks of 64."""
    bm = max(16, next_pow2(ratio))
    if device.type != "cuda" or interpreting():
        return Tiles(bm, 32, 4, 1)
    return Tiles(bm, 64, 4, 3)


def num_splits(length: int, base_programs: int, block_n: int, device: torch.device, key: str,
               min_split: int = 256) -> tuple[int, int]:
    """``(splits, split_len)`` cutting ``length`` keys so that ``base_programs * splits``
    fills the GPU; each split is a multiple of ``block_n`` long and non-empty.

    Splits shorter than ``min_split`` keys would cost more in partial states written and
    merged than they gain in parallelism.
    """
    if length <= 0:
        return 0, block_n
    if key in _FORCE:
        split_len = _FORCE[key]
    else:
        want = cdiv(target_programs(device), max(1, base_programs))
        want = max(1, min(want, cdiv(length, min_split)))
        split_len = cdiv(length, want)
    split_len = cdiv(split_len, block_n) * block_n
    return cdiv(length, split_len), split_len


def forced_value(key: str, default):
    return _FORCE.get(key, default)
