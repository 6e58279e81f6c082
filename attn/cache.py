"""``PrefixKVCache``: ChunkAttention's prefix-aware KV cache, a prefix tree of chunks.

Bookkeeping lives on the host; only the chunk pool lives on the device. Every mutating
method checks its arguments and counts the chunks it needs *before* touching anything,
so a request that fails leaves the cache exactly as it was.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .errors import CacheFullError
from .table import ChunkTable


class PrefixKVCache:
    """A KV cache whose sequences share full chunks with matching token ids.

    Parameters
    ----------
    num_kv_heads, head_dim : int
        ``Hkv`` and ``D``.
    chunk_size : int
        ``C``, tokens per chunk (default 64).
    max_chunks : int
        Size of the pool, allocated once.
    dtype, device
        Of the pool.

    Attributes
    ----------
    k_chunks, v_chunks : torch.Tensor
        The pool, ``[max_chunks, Hkv, C, D]``; pass them with :meth:`table` to
        :func:`attn.chunk_attention`.

    Examples
    --------
    >>> cache = PrefixKVCache(8, 128, chunk_size=64, max_chunks=1024, dtype=torch.bfloat16, device="cuda")
    >>> a = cache.add_sequence(prompt_ids, k, v)          # k, v: [T, Hkv, D]
    >>> samples = cache.fork(a, 4)                          # 4 samples share the prompt
    >>> table = cache.table()                               # rows in table.seq_ids order
    >>> out = attn.chunk_attention(q, cache.k_chunks, cache.v_chunks, table)
    """

    def __init__(self, num_kv_heads: int, head_dim: int, *, chunk_size: int = 64, max_chunks: int,
                 dtype: torch.dtype = torch.bfloat16, device="cpu"):
        for name, val in (("num_kv_heads", num_kv_heads), ("head_dim", head_dim),
                          ("chunk_size", chunk_size), ("max_chunks", max_chunks)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        self.num_kv_heads, self.head_dim, self.chunk_size = num_kv_heads, head_dim, chunk_size
        self.max_chunks = max_chunks
        self.k_chunks = torch.zeros(max_chunks, num_kv_heads, chunk_size, head_dim, dtype=dtype, device=device)
        self.v_chunks = torch.zeros_like(self.k_chunks)
        self._len = np.zeros(max_chunks, dtype=np.int64)       # valid tokens per chunk
        self._ref = np.zeros(max_chunks, dtype=np.int64)       # sequences reading each chunk
        self._tokens: dict[int, list] = {}                     # token ids held by each live chunk
        self._children: dict[int, dict] = {-1: {}}             # trie of full chunks: parent -> {tokens: child}
        self._trie_key: dict[int, tuple] = {}                  # full chunk in the trie -> (parent, tokens)
        self._free = list(range(max_chunks - 1, -1, -1))       # pop() gives the lowest id
        self._seqs: dict[int, list] = {}                       # seq id -> chunk path
        self._next_id = 0

    # ---- queries ------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.k_chunks.dtype

    @property
    def device(self) -> torch.device:
        return self.k_chunks.device

    @property
    def num_free_chunks(self) -> int:
        return len(self._free)

    @property
    def num_used_chunks(self) -> int:
        return self.max_chunks - len(self._free)

    @property
    def seq_ids(self) -> list:
        """Live sequence ids, in creation order."""
        return list(self._seqs)

    def chunks_of(self, seq_id: int) -> list:
        """The chunk ids of ``seq_id``, root to leaf."""
        return list(self._seqs[self._check_seq(seq_id)])

    def tokens(self, seq_id: int) -> list:
        """The token ids of ``seq_id``."""
        return [t for c in self._seqs[self._check_seq(seq_id)] for t in self._tokens[c]]

    def __len__(self) -> int:
        return len(self._seqs)

    def read(self, seq_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The K and V of ``seq_id``, materialised: ``([T, Hkv, D], [T, Hkv, D])``."""
        path = self._seqs[self._check_seq(seq_id)]
        if not path:
            empty = self.k_chunks.new_zeros(0, self.num_kv_heads, self.head_dim)
            return empty, empty.clone()
        k = torch.cat([self.k_chunks[c, :, : self._len[c]].transpose(0, 1) for c in path])
        v = torch.cat([self.v_chunks[c, :, : self._len[c]].transpose(0, 1) for c in path])
        return k, v

    # ---- mutations ------------------------------------------------------------------
    def add_sequence(self, tokens: Sequence[int], k: torch.Tensor, v: torch.Tensor) -> int:
        """Add a sequence of ``T`` tokens with its keys and values ``[T, Hkv, D]``.

        Every full chunk whose token ids (and whose ancestors' token ids) match an existing
        path is shared, not copied; the rest, and a partial tail, get new chunks.

        Returns
        -------
        int
            The new sequence id.

        Raises
        ------
        CacheFullError
            The pool has too few free chunks; nothing changed.
        """
        tokens = self._check_tokens("tokens", tokens)
        self._check_kv(k, v, len(tokens))
        c = self.chunk_size
        parent, shared, start = -1, [], 0
        while start + c <= len(tokens):
            child = self._children.get(parent, {}).get(tuple(tokens[start:start + c]))
            if child is None:
                break
            shared.append(child)
            parent, start = child, start + c
        need = -(-(len(tokens) - start) // c)
        self._reserve(need, f"add_sequence of {len(tokens)} tokens ({len(shared)} chunks shared)")
        path = list(shared)
        for cid in shared:
            self._ref[cid] += 1
        while start < len(tokens):
            n = min(c, len(tokens) - start)
            cid = self._alloc()
            self._write(cid, 0, tokens[start:start + n], k[start:start + n], v[start:start + n])
            self._maybe_index(cid, parent)
            path.append(cid)
            parent, start = cid, start + n
        return self._new_seq(path)

    def append(self, seq_ids: Sequence[int], tokens: Sequence[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Append one token to each of ``seq_ids`` (a decode step).

        Parameters
        ----------
        seq_ids : sequence of int
            Distinct live sequence ids.
        tokens : sequence of int
            The new token of each sequence.
        k, v : torch.Tensor
            ``[len(seq_ids), Hkv, D]``.

        Raises
        ------
        CacheFullError
            Some sequence needs a new chunk and the pool has too few; nothing changed.
        """
        seq_ids = [self._check_seq(s) for s in seq_ids]
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"seq_ids must be distinct, got {seq_ids}")
        tokens = self._check_tokens("tokens", tokens)
        if len(tokens) != len(seq_ids):
            raise ValueError(f"tokens must have one id per sequence ({len(seq_ids)}), got {len(tokens)}")
        self._check_kv(k, v, len(seq_ids))
        needs = [self._needs_new_tail(s) for s in seq_ids]
        self._reserve(sum(needs), f"append to {len(seq_ids)} sequences")
        for i, (s, new) in enumerate(zip(seq_ids, needs)):
            path = self._seqs[s]
            if new:
                path.append(self._alloc())
            tail = path[-1]
            self._write(tail, int(self._len[tail]), tokens[i:i + 1], k[i:i + 1], v[i:i + 1])
            self._maybe_index(tail, path[-2] if len(path) > 1 else -1)

    def remove_sequence(self, seq_id: int) -> None:
        """Remove ``seq_id`` and free every chunk no other sequence reads."""
        for cid in self._seqs.pop(self._check_seq(seq_id)):
            self._ref[cid] -= 1
            if self._ref[cid] == 0:
                self._release(cid)

    def fork(self, seq_id: int, n: int) -> list:
        """``n`` new sequences with the tokens of ``seq_id`` (n samples of one prompt).

        They share its full chunks; a partial tail is copied once per new sequence so that
        each can append on its own.

        Raises
        ------
        CacheFullError
            A partial tail must be copied ``n`` times and the pool has too few free chunks.
        """
        path = self._seqs[self._check_seq(seq_id)]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        partial = bool(path) and self._len[path[-1]] < self.chunk_size
        self._reserve(n if partial else 0, f"fork of sequence {seq_id} into {n}")
        full = path[:-1] if partial else list(path)
        out = []
        for _ in range(n):
            for cid in full:
                self._ref[cid] += 1
            new_path = list(full)
            if partial:
                src = path[-1]
                cid = self._alloc()
                t = int(self._len[src])
                self.k_chunks[cid, :, :t] = self.k_chunks[src, :, :t]
                self.v_chunks[cid, :, :t] = self.v_chunks[src, :, :t]
                self._len[cid] = t
                self._tokens[cid] = list(self._tokens[src])
                new_path.append(cid)
            out.append(self._new_seq(new_path))
        return out

    def table(self) -> ChunkTable:
        """The :class:`ChunkTable` of every live sequence, in depth-first order.

        Rows are sorted by chunk path: sequences sharing a chunk share the whole path down to
        it, so they come out contiguous. ``table.seq_ids`` gives each row's sequence id.
        Unused pool chunks get length 1 in ``chunk_lens`` (no row reads them).
        """
        order = sorted(self._seqs, key=lambda s: (self._seqs[s], s))
        width = max([len(self._seqs[s]) for s in order] + [0])
        seq_chunks = np.full((len(order), width), -1, dtype=np.int64)
        for row, s in enumerate(order):
            seq_chunks[row, : len(self._seqs[s])] = self._seqs[s]
        return ChunkTable.from_seq_chunks(seq_chunks, np.maximum(self._len, 1), seq_ids=order, device=self.device)

    # ---- internals ------------------------------------------------------------------
    def _check_seq(self, seq_id) -> int:
        if isinstance(seq_id, bool) or not isinstance(seq_id, (int, np.integer)) or int(seq_id) not in self._seqs:
            raise KeyError(f"no live sequence with id {seq_id!r} (live: {sorted(self._seqs)})")
        return int(seq_id)

    @staticmethod
    def _check_tokens(name: str, tokens) -> list:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.tolist()
        tokens = list(tokens)
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in tokens):
            raise TypeError(f"{name} must be a sequence of ints")
        return [int(t) for t in tokens]

    def _check_kv(self, k, v, rows: int) -> None:
        want = (rows, self.num_kv_heads, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor {list(want)}, got {type(t).__name__}")
            if tuple(t.shape) != want:
                raise ValueError(f"{name} must be [T={rows}, Hkv={self.num_kv_heads}, D={self.head_dim}], got shape {tuple(t.shape)}")
            if t.dtype != self.dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but the cache holds {self.dtype}")
            if t.device != self.device:
                raise ValueError(f"{name} is on {t.device} but the cache is on {self.device}")

    def _reserve(self, need: int, what: str) -> None:
        if need > len(self._free):
            raise CacheFullError(
                f"{what} needs {need} free chunks but the pool has {len(self._free)} of {self.max_chunks} "
                "free; the cache is unchanged (remove sequences or allocate a larger pool)"
            )

    def _needs_new_tail(self, seq_id: int) -> bool:
        path = self._seqs[seq_id]
        return not path or self._len[path[-1]] >= self.chunk_size

    def _alloc(self) -> int:
        cid = self._free.pop()
        self._len[cid] = 0
        self._ref[cid] = 1
        self._tokens[cid] = []
        return cid

    def _write(self, cid: int, at: int, tokens: list, k: torch.Tensor, v: torch.Tensor) -> None:
        n = len(tokens)
        self.k_chunks[cid, :, at:at + n] = k.transpose(0, 1)
        self.v_chunks[cid, :, at:at + n] = v.transpose(0, 1)
        self._len[cid] = at + n
        self._tokens[cid].extend(tokens)

    def _maybe_index(self, cid: int, parent: int) -> None:
        """Put a chunk that just became full into the trie, unless an equal sibling is there."""
        if self._len[cid] < self.chunk_size or cid in self._trie_key:
            return
        key = tuple(self._tokens[cid])
        siblings = self._children.setdefault(parent, {})
        if key not in siblings:
            siblings[key] = cid
            self._trie_key[cid] = (parent, key)

    def _release(self, cid: int) -> None:
        entry = self._trie_key.pop(cid, None)
        if entry is not None:
            parent, key = entry
            self._children.get(parent, {}).pop(key, None)
        self._children.pop(cid, None)
        self._tokens.pop(cid, None)
        self._len[cid] = 0
        self._free.append(cid)

    def _new_seq(self, path: list) -> int:
        sid = self._next_id
        self._next_id += 1
        self._seqs[sid] = path
        return sid
