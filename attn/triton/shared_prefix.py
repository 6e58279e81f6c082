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
    phases = len(p.prefix_k) + (p.suffix_capacity > 0)
    overlap = config.overlap_phases(phases, dev)
    levels = []
    for i, lk in enumerate(p.prefix_k):
        g, length = lk.shape[:2]
        rows = (b // g) * ratio
        tiles = config.shared_tiles(rows, d, p.dtype, dev, overlap=overlap)
        base = g * hkv * config.cdiv(rows, tiles.block_m)
        splits, split_len = config.num_splits(length, base, tiles, dev, "prefix_split",
                                              min_split=config.prefix_min_split(overlap))
        levels.append((i, splits, split_len, tiles))
    s = p.suffix_capacity
    suffix = None
    if s > 0:
        tiles = config.decode_tiles(ratio, d, p.dtype, dev, overlap=overlap, keys=s)
        suffix = (-1, *config.num_splits(s, b * hkv, tiles, dev, "suffix_split"), tiles)
    # A tree's leaf level takes the suffixes too (segment.py, LEAF_SUFFIX), when a sequence's
    # suffix keys lie within 32-bit element offsets (its loop addresses them so).
    seqs = b // p.prefix_k[-1].shape[0] if levels else 0
    fused = suffix is not None and levels and suffix_offsets_fit(p) and config.leaf_with_suffix(
        len(levels), seqs * ratio, levels[-1][3], levels[-1][1], suffix[1])
    steps = [("prefix", *lv) for lv in (levels[:-1] if fused else levels)]
    if fused:
        i, splits, split_len, tiles = levels[-1]
        steps.append(("leaf+suffix", i, splits, split_len, tiles))
    elif suffix is not None:
        steps.append(("suffix", *suffix))
    # No more pipeline stages than key blocks per program (a leaf program walks its group's
    # keys and each of its sequences' suffix keys).
    return [(kind, i, splits, split_len, config.fit_stages(tiles, config.cdiv(split_len, tiles.block_n) + (
        seqs * config.cdiv(s, tiles.block_n) if kind == "leaf+suffix" else 0)))
        for kind, i, splits, split_len, tiles in steps]


def suffix_offsets_fit(p: SharedPrefixProblem) -> bool:
    """Whether each sequence's suffix keys are within ``2**31`` elements of its first key."""
    return p.suffix_capacity * max(p.suffix_k.stride(1), p.suffix_v.stride(1)) < 2**31


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
    # The suffix's K/V bytes against the prefix levels' flops (config.suffix_critical).
    critical = config.suffix_critical(4 * b * hq * d * sum(k.shape[1] for k in p.prefix_k),
                                      2 * b * p.suffix_capacity * p.num_kv_heads * d * q.element_size())
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
                                          suffix=suffix, kind=kind, overlap=overlap, suffix_critical=critical))
        base += splits
    if overlap:
        concurrently([launches[j] for j in config.launch_order(len(launches))], p.device)
    else:
        for launch in launches:
            launch()
    if not fold:
        launch_merge(parts_o.view(total, b * hq, d), parts_lse.view(total, b * hq), out.view(b * hq, d),
                     lse.view(b * hq))
    return out, lse
