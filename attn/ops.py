"""The public ops: validate, pick a backend, run."""
from __future__ import annotations

from typing import Optional


from .dispatch import select
from .problems import chunk_problem, merge_problem, shared_prefix_problem
from .table import ChunkTable


def shared_prefix_attention(q, prefix_k, prefix_v, suffix_k=None, suffix_v=None, suffix_lens=None, *,
                            scale: Optional[float] = None, return_lse: bool = False,
                            backend: Optional[str] = None):
    """Decode attention of ``B`` sequences over a shared (possibly multi-level) prefix and
    their own suffixes — Hydragen's decomposition.

    Sequence ``b`` attends to the concatenation of its prefix at every level, then the
    first ``suffix_lens[b]`` tokens of its suffix. No causal mask.

    Parameters
    ----------
    q : torch.Tensor
        ``[B, Hq, D]``, one decode query per sequence.
    prefix_k, prefix_v : torch.Tensor or list of torch.Tensor
        ``[P, Hkv, D]`` shared by all ``B`` sequences, or a list of levels, level ``i``
        ``[G_i, P_i, Hkv, D]`` where ``G_i`` divides ``B`` and sequence ``b`` reads group
        ``b // (B // G_i)``. ``P`` may be 0.
    suffix_k, suffix_v : torch.Tensor, optional
        ``[B, S, Hkv, D]``, each sequence's own tokens, right-padded.
    suffix_lens : torch.Tensor, optional
        int ``[B]`` with ``0 <= suffix_lens[b] <= S``; None means all ``S``. Keys and values
        past ``suffix_lens[b]`` are never read into the output: they may hold anything (NaN,
        inf, another sequence's stale entries). The lengths are range-checked before any
        kernel runs: on the GPU that reads them back, one host synchronisation per call
        (skipped while a CUDA graph is captured); given on the CPU they are checked there and
        copied without one, which an eager decode loop should prefer (a CUDA graph capture
        refuses them there: pass them on the GPU).
    scale : float, optional
        Softmax scale, default ``1 / sqrt(D)``.
    return_lse : bool
        Also return the log-sum-exp.
    backend : str, optional
        ``"tk"``, ``"triton"``, ``"torch"`` or ``"auto"``; overrides ``use_backend`` and
        ``ATTN_BACKEND``.

    Returns
    -------
    out : torch.Tensor
        ``[B, Hq, D]`` in ``q``'s dtype.
    lse : torch.Tensor
        float32 ``[B, Hq]``, natural log of ``sum_j exp(scale * q . k_j)``; ``-inf`` (with
        ``out = 0``) for a sequence with no keys. Only with ``return_lse=True``.

    Raises
    ------
    ValueError, TypeError
        Malformed inputs, before any kernel runs.
    attn.BackendUnavailableError, attn.NoBackendError
        The requested backend, or every backend, cannot run these inputs.
    """
    problem = shared_prefix_problem(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale)
    out, lse = select(problem, backend).run(problem)
    return (out, lse) if return_lse else out


def chunk_attention(q, k_chunks, v_chunks, table: ChunkTable, *, scale: Optional[float] = None,
                    return_lse: bool = False, backend: Optional[str] = None):
    """Decode attention over a prefix tree of KV chunks — ChunkAttention's two-phase kernel.

    Sequence ``n`` attends to the concatenation, in order, of the first ``chunk_lens[c]``
    tokens of every chunk ``c`` in ``table.seq_chunks[n]``; a chunk's rows past its length are
    never read into the output (they may hold anything).

    Parameters
    ----------
    q : torch.Tensor
        ``[N, Hq, D]``, one query per sequence in the order of ``table``'s rows.
    k_chunks, v_chunks : torch.Tensor
        The chunk pool, ``[num_chunks, Hkv, C, D]``.
    table : ChunkTable
        Which chunks each sequence reads (see :class:`attn.ChunkTable`).
    scale, return_lse, backend
        As in :func:`shared_prefix_attention`.

    Returns
    -------
    out : torch.Tensor
        ``[N, Hq, D]`` in ``q``'s dtype.
    lse : torch.Tensor
        float32 ``[N, Hq]``, only with ``return_lse=True``.
    """
    problem = chunk_problem(q, k_chunks, v_chunks, table, scale)
    out, lse = select(problem, backend).run(problem)
    return (out, lse) if return_lse else out


def merge_states(outs, lses, *, backend: Optional[str] = None):
    """Merge partial attention states by their log-sum-exp.

    Parameters
    ----------
    outs : torch.Tensor or list of torch.Tensor
        ``[K, ..., D]``: ``K`` normalised partial outputs of the same queries over disjoint
        key sets.
    lses : torch.Tensor or list of torch.Tensor
        float32 ``[K, ...]``, natural-log LSE of each partial (``-inf`` for an empty one).

    Returns
    -------
    out : torch.Tensor
        ``[..., D]`` in ``outs``' dtype: attention over the union of the key sets.
    lse : torch.Tensor
        float32 ``[...]``. Merging is associative and order-independent; an empty state is
        the identity; all-empty gives ``out = 0``, ``lse = -inf``.
    """
    problem = merge_problem(outs, lses)
    return select(problem, backend).run(problem)

