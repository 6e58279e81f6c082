"""``shared_prefix_attention`` on Triton: Hydragen's decomposition.

Every prefix level is attended with the stacked queries of its groups (:mod:`.segment`,
split along the prefix so that few groups still fill the GPU), the ragged suffixes with the
same kernel as decode attention (one sequence per group, split-K for long suffixes), and all
partial states are merged once (:mod:`.merge`). Launch parameters come from shapes only.

On a GPU the phases run concurrently on streams (:mod:`attn.streams`): the compute-bound
prefix levels and the memory-bound suffix share the SMs, and one merge kernel follows. Run
in order (the interpreter, or ``config.forced(overlap=False)``), the last phase folds the
earlier states in instead of a merge.
"""
from __future__ import annotations

import functools

import torch

from ..problems import SharedPrefixProblem
from ..streams import concurrently
from . import config
from .merge import launch_merge
from .segment import launch_segment


def plan(p: SharedPrefixProblem):
    """The launches of ``p``: a list of ``(kind, level index, splits, split_len, tiles)``."""
    b, hq, d = p.q.shape
    hkv = p.num_kv_heads
    ratio = hq // hkv
    dev = p.device
    steps = []
    phases = len(p.prefix_k) + (p.suffix_capacity > 0)
    overlap = config.overlap_phases(phases, dev)
    for i, lk in enumerate(p.prefix_k):
        g, length = lk.shape[:2]
        rows = (b // g) * ratio
        tiles = config.shared_tiles(rows, d, p.dtype, dev, overlap=overlap)
        base = g * hkv * config.cdiv(rows, tiles.block_m)
        splits, split_len = config.num_splits(length, base, tiles, dev, "prefix_split",
                                              min_split=config.prefix_min_split(overlap))
        tiles = config.fit_stages(tiles, config.cdiv(split_len, tiles.block_n))
        steps.append(("prefix", i, splits, split_len, tiles))
    s = p.suffix_capacity
    if s > 0:
        tiles = config.decode_tiles(ratio, d, p.dtype, dev, overlap=overlap, keys=s)
        splits, split_len = config.num_splits(s, b * hkv, tiles, dev, "suffix_split")
        tiles = config.fit_stages(tiles, config.cdiv(split_len, tiles.block_n))
        steps.append(("suffix", -1, splits, split_len, tiles))
    return steps


def run_shared_prefix(p: SharedPrefixProblem) -> tuple[torch.Tensor, torch.Tensor]:
    q = p.q
    b, hq, d = q.shape
    out = torch.empty(b, hq, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, hq, dtype=torch.float32, device=q.device)
    steps = plan(p) if b > 0 else []
    total = sum(st[2] for st in steps)
    if total == 0:
        out.zero_()
        lse.fill_(float("-inf"))
        return out, lse
    # Several phases overlap on streams (attn.streams) and one merge kernel combines their
    # partial states. Run in order instead, a last phase of one split (the usual suffix)
    # folds everything in and writes the output: no merge launch.
    overlap = config.overlap_phases(len(steps), p.device)
    fold = not overlap and steps[-1][2] == 1
    stored = total - 1 if fold else total
    parts_o = torch.empty(max(1, stored), b, hq, d, dtype=config.partial_dtype(q.dtype), device=q.device)
    parts_lse = torch.empty(max(1, stored), b, hq, dtype=torch.float32, device=q.device)
    launches = []
    base = 0
    for idx, (kind, i, splits, split_len, tiles) in enumerate(steps):
        if kind == "prefix":
            k, v, lens = p.prefix_k[i], p.prefix_v[i], None
        else:
            k, v, lens = p.suffix_k, p.suffix_v, p.suffix_lens
        last = fold and idx == len(steps) - 1
        launches.append(functools.partial(launch_segment, q, k, v, lens, parts_o, parts_lse, base, splits,
                                          split_len, p.scale, tiles, fold_into=(out, lse) if last else None))
        base += splits
    if overlap:
        # The first prefix level is the longest-running phase: it goes first.
        concurrently(launches, p.device)
    else:
        for launch in launches:
            launch()
    if not fold:
        launch_merge(parts_o.view(total, b * hq, d), parts_lse.view(total, b * hq), out.view(b * hq, d),
                     lse.view(b * hq))
    return out, lse
