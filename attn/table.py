"""``ChunkTable``: which chunks of the pool each sequence reads, and which are shared.

Everything here is validated and derived once, on the host, when the table is built,
so that an op call on a table costs no host synchronisation and no metadata work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch


def _as_int_array(name: str, x, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got dtype {x.dtype}")
        arr = x.detach().cpu().numpy()
    else:
        arr = np.asarray(x)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, got {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(arr.shape)}")
    return arr.astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class ChunkTable:
    """Chunk layout of a batch of sequences over a chunk pool (ChunkAttention's prefix tree).

    Build it with :meth:`from_seq_chunks` (or :meth:`attn.PrefixKVCache.table`); the
    constructor validates every field and the consistency between them.

    Parameters
    ----------
    seq_chunks : torch.Tensor
        int32 ``[N, max_chunks]``: each sequence's chunk ids from root to leaf, ``-1`` padded
        at the end.
    chunk_lens : torch.Tensor
        int32 ``[num_chunks]``: valid tokens of each chunk of the pool, ``1..C``.
    shared_chunks : torch.Tensor
        int32 ``[M]``: every chunk read by two or more sequences.
    shared_begin, shared_end : torch.Tensor
        int32 ``[M]``: the half-open range of sequences (rows) that read ``shared_chunks[m]``.
    seq_ids : list of int, optional
        The :class:`~attn.PrefixKVCache` sequence id of each row; ``None`` for tables built
        directly.

    Notes
    -----
    Derived once at construction (used by the kernels, all int32 on the table's device):

    - ``private_chunks [N, max_private]``: the chunks each sequence reads alone, ``-1`` padded;
    - ``seq_shared [N, max_shared]``: for each sequence, the indices ``m`` into
      ``shared_chunks`` it reads, ``-1`` padded.
    """

    seq_chunks: torch.Tensor
    chunk_lens: torch.Tensor
    shared_chunks: torch.Tensor
    shared_begin: torch.Tensor
    shared_end: torch.Tensor
    seq_ids: Optional[list] = None
    # Host-side facts, derived at construction; never touch the device again.
    num_seqs: int = field(init=False)
    num_chunks: int = field(init=False)
    max_chunk_len: int = field(init=False)
    max_seq_tokens: int = field(init=False)
    max_group_size: int = field(init=False)
    private_chunks: torch.Tensor = field(init=False)
    seq_shared: torch.Tensor = field(init=False)
    host: dict = field(init=False, repr=False)

    def __post_init__(self):
        sc = _as_int_array("seq_chunks", self.seq_chunks, 2)
        cl = _as_int_array("chunk_lens", self.chunk_lens, 1)
        sh = _as_int_array("shared_chunks", self.shared_chunks, 1)
        sb = _as_int_array("shared_begin", self.shared_begin, 1)
        se = _as_int_array("shared_end", self.shared_end, 1)
        device = self.seq_chunks.device if isinstance(self.seq_chunks, torch.Tensor) else torch.device("cpu")
        n, _ = sc.shape
        num_chunks = cl.shape[0]
        if (cl < 1).any():
            bad = int(np.nonzero(cl < 1)[0][0])
            raise ValueError(f"chunk_lens must be >= 1 for every chunk, got chunk_lens[{bad}] = {cl[bad]}")
        if (sc < -1).any() or (sc >= num_chunks).any():
            bad = tuple(int(i) for i in np.argwhere((sc < -1) | (sc >= num_chunks))[0])
            raise ValueError(
                f"seq_chunks{list(bad)} = {sc[bad]} is out of range: chunk ids must be in "
                f"[0, {num_chunks}) (num_chunks = len(chunk_lens)) or -1 for padding"
            )
        valid = sc >= 0
        # -1 is padding, so it may only trail: a hole would silently drop the chunks after it.
        if (valid[:, 1:] & ~valid[:, :-1]).any():
            row = int(np.nonzero((valid[:, 1:] & ~valid[:, :-1]).any(axis=1))[0][0])
            raise ValueError(f"seq_chunks row {row} has a chunk id after a -1: -1 padding must come last, got {sc[row].tolist()}")
        rows_of, ids = np.nonzero(valid)[0], sc[valid]  # row-major: each row's chunks in order
        if ids.size:
            key = np.sort(rows_of * num_chunks + ids)
            dup = key[1:] == key[:-1]
            if dup.any():
                row = int(key[1:][dup].min() // num_chunks)
                raise ValueError(f"seq_chunks row {row} reads a chunk twice: {sc[row][valid[row]].tolist()}")
        first, last, count = _chunk_users(rows_of, ids, num_chunks)
        shared_ids = np.flatnonzero(count >= 2)
        gap = shared_ids[last[shared_ids] - first[shared_ids] + 1 != count[shared_ids]]
        if gap.size:
            # the one a row-major scan meets first
            c = int(gap[np.argmin(_first_pos(ids, gap))])
            raise ValueError(
                f"chunk {c} is shared by sequences {rows_of[ids == c].tolist()}, which are not contiguous: order "
                "the rows depth-first so that the sequences sharing a chunk are adjacent"
            )
        want = {int(c): (int(first[c]), int(last[c]) + 1) for c in shared_ids}
        if not (sh.shape == sb.shape == se.shape):
            raise ValueError(
                f"shared_chunks, shared_begin, shared_end must have one length, got "
                f"{sh.shape[0]}, {sb.shape[0]}, {se.shape[0]}"
            )
        given = {}
        for c, b, e in zip(sh.tolist(), sb.tolist(), se.tolist()):
            if c in given:
                raise ValueError(f"shared_chunks lists chunk {c} twice")
            given[c] = (b, e)
        if given != want:
            raise ValueError(
                "shared_chunks/shared_begin/shared_end do not match seq_chunks: expected "
                f"{dict(sorted(want.items()))}, got {dict(sorted(given.items()))} "
                "(use ChunkTable.from_seq_chunks to derive them)"
            )
        if self.seq_ids is not None and len(self.seq_ids) != n:
            raise ValueError(f"seq_ids must have one id per row ({n}), got {len(self.seq_ids)}")

        m_of = np.full(num_chunks, -1, dtype=np.int64)
        m_of[sh] = np.arange(sh.shape[0])
        m = np.where(valid, m_of[np.clip(sc, 0, None)] if num_chunks else -1, -1)
        pv = _left_packed(np.where(valid & (m < 0), sc, -1))   # each row's private chunks, in order
        ss = _left_packed(np.where(m >= 0, m, -1))             # and its shared chunks' indices

        tokens = np.where(valid, cl[np.clip(sc, 0, None)] if num_chunks else 0, 0).sum(axis=1) if n else np.zeros(0)
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int32, device=device)  # noqa: E731
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        put("seq_chunks", t(sc))
        put("chunk_lens", t(cl))
        put("shared_chunks", t(sh))
        put("shared_begin", t(sb))
        put("shared_end", t(se))
        put("num_seqs", int(n))
        put("num_chunks", int(num_chunks))
        put("max_chunk_len", int(cl.max()) if num_chunks else 0)
        put("max_seq_tokens", int(tokens.max()) if n else 0)
        put("max_group_size", int((se - sb).max()) if sh.size else 1)
        put("private_chunks", t(pv))
        put("seq_shared", t(ss))
        put("host", {"seq_chunks": sc, "chunk_lens": cl, "shared_chunks": sh, "shared_begin": sb,
                     "shared_end": se, "private_chunks": pv, "seq_shared": ss, "seq_tokens": tokens})

    @property
    def device(self) -> torch.device:
        return self.seq_chunks.device

    @property
    def num_shared(self) -> int:
        """``M``, the number of shared chunks."""
        return int(self.shared_chunks.shape[0])

    @classmethod
    def from_seq_chunks(cls, seq_chunks, chunk_lens, *, seq_ids: Optional[Sequence[int]] = None,
                        device=None) -> "ChunkTable":
        """Build a table from each sequence's chunk ids, deriving the shared ranges.

        Parameters
        ----------
        seq_chunks : torch.Tensor or array-like
            int ``[N, max_chunks]``, ``-1`` padded at the end.
        chunk_lens : torch.Tensor or array-like
            int ``[num_chunks]``, valid tokens of each chunk (``1..C``).
        seq_ids : sequence of int, optional
            Recorded as the table's ``seq_ids``.
        device : torch.device, optional
            Where the table's tensors live; default: ``seq_chunks``' device (CPU for
            array-likes).

        Raises
        ------
        ValueError
            A chunk id out of range, ``-1`` before a chunk id, a chunk read twice by one
            sequence, or a chunk shared by sequences that are not contiguous.
        """
        if device is None:
            device = seq_chunks.device if isinstance(seq_chunks, torch.Tensor) else torch.device("cpu")
        sc = _as_int_array("seq_chunks", seq_chunks, 2)
        cl = _as_int_array("chunk_lens", chunk_lens, 1)
        if sc.size and ((sc < -1).any() or (sc >= cl.shape[0]).any()):
            sh = []  # out of range: the constructor says so
        else:
            rows_of, ids = np.nonzero(sc >= 0)[0], sc[sc >= 0]
            first, last, count = _chunk_users(rows_of, ids, cl.shape[0])
            sh = np.flatnonzero(count >= 2)
            sh = sh[np.lexsort((sh, first[sh]))].tolist()  # by first reader, then id
            first, last = first.tolist(), last.tolist()
        # The constructor rejects non-contiguous sharing; ranges here assume contiguity.
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), dtype=torch.int32, device=device)  # noqa: E731
        return cls(t(sc), t(cl), t(sh), t([first[c] for c in sh]), t([last[c] + 1 for c in sh]),
                   seq_ids=list(seq_ids) if seq_ids is not None else None)

    def to(self, device) -> "ChunkTable":
        """The same table with its tensors on ``device``."""
        h = self.host
        return ChunkTable(*(torch.as_tensor(h[k], dtype=torch.int32, device=device) for k in
                            ("seq_chunks", "chunk_lens", "shared_chunks", "shared_begin", "shared_end")),
                          seq_ids=self.seq_ids)


def _chunk_users(rows_of: np.ndarray, ids: np.ndarray, num_chunks: int):
    """``(first, last, count)`` per chunk id: the first and last row reading it and how many
    reads it has (``rows_of``, ``ids``: the reads in row-major order; -1 for unread chunks)."""
    count = np.bincount(ids, minlength=num_chunks).astype(np.int64)
    first = np.full(num_chunks, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(num_chunks, -1, dtype=np.int64)
    np.minimum.at(first, ids, rows_of)
    np.maximum.at(last, ids, rows_of)
    first[count == 0] = -1
    return first, last, count


def _first_pos(ids: np.ndarray, chunks: np.ndarray) -> np.ndarray:
    """Where each of ``chunks`` (all read) is first read in the row-major list of reads ``ids``."""
    pos = np.full(int(ids.max()) + 1, ids.size, dtype=np.int64)
    np.minimum.at(pos, ids, np.arange(ids.size))
    return pos[chunks]


def _left_packed(a: np.ndarray) -> np.ndarray:
    """Each row's entries ``>= 0``, in order, left-aligned and ``-1`` padded to the longest row."""
    keep = a >= 0
    n = a.shape[0]
    width = int(keep.sum(axis=1).max()) if n and a.shape[1] else 0
    out = np.full((n, width), -1, dtype=np.int64)
    r, c = np.nonzero(keep)
    out[r, (np.cumsum(keep, axis=1) - 1)[r, c]] = a[r, c]
    return out
