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
    """The launches of ``p``: a list of ``(kind, level index, splits, split_len, tiles)``,
    ``kind`` one of ``prefix``, ``suffix`` and ``leaf+suffix`` (the deepest level with the
    suffixes, :func:`config.leaf_with_suffix`)."""
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
        steps.append(["prefix", i, splits, split_len, tiles])
    s = p.suffix_capacity
    if s > 0:
        tiles = config.decode_tiles(ratio, d, p.dtype, dev, overlap=overlap, keys=s)
        splits, split_len = config.num_splits(s, b * hkv, tiles, dev, "suffix_split")
        steps.append(["suffix", -1, splits, split_len, tiles])
        leaf = steps[-2] if len(steps) >= 2 else None
        if leaf is not None and config.leaf_with_suffix(len(p.prefix_k), b // p.prefix_k[-1].shape[0] * ratio,
                                                        leaf[4], leaf[2], splits):
            # The deepest level's programs also walk their sequences' suffixes (segment.py).
            steps.pop()
            leaf[0] = "leaf+suffix"
            blocks = config.cdiv(leaf[3], leaf[4].block_n) + (b // p.prefix_k[-1].shape[0]) * config.cdiv(
                s, leaf[4].block_n)
            leaf[4] = config.fit_stages(leaf[4], blocks)
    for st in steps:
        if st[0] != "leaf+suffix":
            st[4] = config.fit_stages(st[4], config.cdiv(st[3], st[4].block_n))
    return [tuple(st) for st in steps]


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
        if kind == "suffix":
            k, v, lens = p.suffix_k, p.suffix_v, p.suffix_lens
        else:
            k, v, lens = p.prefix_k[i], p.prefix_v[i], None
        suffix = (p.suffix_k, p.suffix_v, p.suffix_lens) if kind == "leaf+suffix" else None
        last = fold and idx == len(steps) - 1
        launches.append(functools.partial(launch_segment, q, k, v, lens, parts_o, parts_lse, base, splits,
                                          split_len, p.scale, tiles, fold_into=(out, lse) if last else None,
                                          suffix=suffix))
        base += splits
    order = config.forced_value("launch_order", None)
    if order is not None and sorted(order) == list(range(len(launches))):
        launches = [launches[j] for j in order]
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
