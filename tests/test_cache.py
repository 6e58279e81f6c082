"""PrefixKVCache: sharing, append, fork, remove, the table it produces, and that a full pool
changes nothing. A hypothesis state machine drives random operation sequences against a
plain model of every sequence's tokens and K/V."""
from __future__ import annotations

import copy

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import attn
from attn import CacheFullError, PrefixKVCache
from attn.reference import naive_attention

HKV, D, C = 2, 4, 4


def kv(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, HKV, D, generator=g, dtype=torch.float64), torch.randn(n, HKV, D, generator=g, dtype=torch.float64)


def snapshot(cache):
    state = {k: copy.deepcopy(v) for k, v in vars(cache).items() if k not in ("k_chunks", "v_chunks")}
    return state, cache.k_chunks.clone(), cache.v_chunks.clone()


def assert_unchanged(cache, snap):
    state, k, v = snap
    now = {k_: v_ for k_, v_ in vars(cache).items() if k_ not in ("k_chunks", "v_chunks")}
    assert set(now) == set(state)
    for key in state:
        a, b = now[key], state[key]
        assert (a == b).all() if hasattr(a, "all") else a == b, key
    assert torch.equal(cache.k_chunks, k) and torch.equal(cache.v_chunks, v)


def test_full_chunks_with_matching_tokens_are_shared():
    cache = PrefixKVCache(HKV, D, chunk_size=C, max_chunks=16, dtype=torch.float64)
    toks = list(range(14))  # 3 full chunks + 2 tokens
    k, v = kv(14, 0)
    a = cache.add_sequence(toks, k, v)
    assert cache.num_used_chunks == 4
    k2, v2 = kv(10, 1)
    b = cache.add_sequence(toks[:8] + [99, 98], torch.cat([k[:8], k2[:2]]), torch.cat([v[:8], v2[:2]]))
    assert cache.chunks_of(b)[:2] == cache.chunks_of(a)[:2]
    assert cache.num_used_chunks == 5
    # A different first chunk shares nothing, even if later chunks match.
    c = cache.add_sequence([7] + toks[1:8], k[:8], v[:8])
    assert not set(cache.chunks_of(c)) & set(cache.chunks_of(a))
    table = cache.table()
    assert sorted(table.seq_ids) == [a, b, c]
    assert table.num_shared == 2


def test_fork_shares_full_chunks_and_copies_partial_tail():
    cache = PrefixKVCache(HKV, D, chunk_size=C, max_chunks=16, dtype=torch.float64)
    k, v = kv(6, 0)
    a = cache.add_sequence(range(6), k, v)
    kids = cache.fork(a, 3)
    for s in kids:
        assert cache.chunks_of(s)[0] == cache.chunks_of(a)[0]
        assert cache.chunks_of(s)[1] != cache.chunks_of(a)[1]
        assert cache.tokens(s) == list(range(6))
        assert torch.equal(cache.read(s)[0], k)
    assert cache.num_used_chunks == 2 + 3
    nk, nv = kv(4, 1)
    cache.append([a] + kids, [10, 11, 12, 13], nk, nv)
    for i, s in enumerate([a] + kids):
        assert cache.tokens(s) == list(range(6)) + [10 + i]
        assert torch.equal(cache.read(s)[0][-1], nk[i])


def test_remove_frees_unshared_chunks_and_they_are_reused():
    cache = PrefixKVCache(HKV, D, chunk_size=C, max_chunks=6, dtype=torch.float64)
    k, v = kv(9, 0)
    a = cache.add_sequence(range(9), k, v)
    b = cache.add_sequence(list(range(4)) + [50, 51], torch.cat([k[:4], k[:2]]), torch.cat([v[:4], v[:2]]))
    used = cache.num_used_chunks
    cache.remove_sequence(a)
    assert cache.num_used_chunks == used - 2  # a's 2nd and 3rd chunks; the 1st is b's too
    freed = set(range(6)) - {c for s in cache.seq_ids for c in cache.chunks_of(s)}
    assert len(freed) == 4  # 6 in the pool, b holds 2
    d = cache.add_sequence(range(20, 29), k, v)
    assert set(cache.chunks_of(d)) <= freed  # the new sequence lives in freed chunks
    assert cache.num_used_chunks == used - 2 + 3
    with pytest.raises(KeyError):
        cache.remove_sequence(a)
    assert torch.equal(cache.read(b)[0][:4], k[:4])


def test_full_pool_raises_and_changes_nothing():
    cache = PrefixKVCache(HKV, D, chunk_size=C, max_chunks=3, dtype=torch.float64)
    k, v = kv(6, 0)
    a = cache.add_sequence(range(6), k, v)
    snap = snapshot(cache)
    with pytest.raises(CacheFullError, match="unchanged"):
        cache.add_sequence(range(100, 109), *kv(9, 1))
    assert_unchanged(cache, snap)
    with pytest.raises(CacheFullError):
        cache.fork(a, 2)
    assert_unchanged(cache, snap)
    cache.append([a, *cache.fork(a, 1)], [1, 2], *kv(2, 2))  # fits exactly
    snap = snapshot(cache)
    full = [s for s in cache.seq_ids]
    cache.append(full, [3, 4], *kv(2, 3))  # both tails now hold C tokens
    snap = snapshot(cache)
    with pytest.raises(CacheFullError):
        cache.append(full, [5, 6], *kv(2, 4))  # both tails full, no free chunk
    assert_unchanged(cache, snap)


def test_bad_arguments_are_rejected_without_change():
    cache = PrefixKVCache(HKV, D, chunk_size=C, max_chunks=4, dtype=torch.float64)
    a = cache.add_sequence(range(3), *kv(3, 0))
    snap = snapshot(cache)
    with pytest.raises(ValueError, match="T=2"):
        cache.add_sequence(range(2), *kv(3, 0))
    with pytest.raises(TypeError, match="dtype"):
        cache.add_sequence(range(3), *(t.float() for t in kv(3, 0)))
    with pytest.raises(ValueError, match="distinct"):
        cache.append([a, a], [1, 2], *kv(2, 0))
    with pytest.raises(KeyError):
        cache.append([a + 7], [1], *kv(1, 0))
    with pytest.raises(ValueError, match="one id per sequence"):
        cache.append([a], [1, 2], *kv(1, 0))
    assert_unchanged(cache, snap)
    with pytest.raises(ValueError):
        PrefixKVCache(HKV, D, chunk_size=0, max_chunks=4)


def test_table_feeds_chunk_attention():
    cache = PrefixKVCache(HKV, D, chunk_size=C, max_chunks=32, dtype=torch.float64)
    a = cache.add_sequence(range(10), *kv(10, 0))
    kids = cache.fork(a, 2)
    cache.add_sequence(range(50, 55), *kv(5, 1))
    cache.append(kids, [1, 2], *kv(2, 2))
    table = cache.table()
    q = torch.randn(len(table.seq_ids), 2 * HKV, D, dtype=torch.float64)
    out, lse = attn.chunk_attention(q, cache.k_chunks, cache.v_chunks, table, return_lse=True, backend="torch")
    ref, ref_lse = naive_attention(q, [cache.read(s) for s in table.seq_ids], D ** -0.5)
    assert torch.allclose(out, ref, atol=1e-12) and torch.allclose(lse, ref_lse, atol=1e-12)


class CacheMachine(RuleBasedStateMachine):
    """Random add/append/remove/fork against a model: {seq_id: (tokens, k, v)}."""

    def __init__(self):
        super().__init__()
        self.cache = PrefixKVCache(1, 2, chunk_size=3, max_chunks=14, dtype=torch.float64)
        self.model = {}

    @staticmethod
    def _kv(tokens):
        """K/V of each position, a function of the token prefix up to it (as in a real
        model): that is what makes sharing by token ids correct."""
        ks, vs = [], []
        for i in range(len(tokens)):
            g = torch.Generator().manual_seed(hash(tuple(tokens[: i + 1])) % 2**31)
            ks.append(torch.randn(1, 2, generator=g, dtype=torch.float64))
            vs.append(torch.randn(1, 2, generator=g, dtype=torch.float64))
        if not ks:
            return torch.zeros(0, 1, 2, dtype=torch.float64), torch.zeros(0, 1, 2, dtype=torch.float64)
        return torch.stack(ks), torch.stack(vs)

    def _try(self, fn):
        snap = snapshot(self.cache)
        try:
            return fn()
        except CacheFullError:
            assert_unchanged(self.cache, snap)
            return None

    @rule(tokens=st.lists(st.integers(0, 1), max_size=10))
    def add(self, tokens):
        k, v = self._kv(tokens)
        before = self.cache.num_used_chunks
        sid = self._try(lambda: self.cache.add_sequence(tokens, k, v))
        if sid is not None:
            self.model[sid] = (list(tokens), k, v)
            assert self.cache.num_used_chunks - before <= -(-len(tokens) // 3)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def append(self, data):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, unique=True))
        toks = data.draw(st.lists(st.integers(0, 1), min_size=len(ids), max_size=len(ids)))
        k = torch.cat([self._kv(self.model[s][0] + [t])[0][-1:] for s, t in zip(ids, toks)])
        v = torch.cat([self._kv(self.model[s][0] + [t])[1][-1:] for s, t in zip(ids, toks)])
        if self._try(lambda: self.cache.append(ids, toks, k, v) or True):
            for i, s in enumerate(ids):
                t, mk, mv = self.model[s]
                self.model[s] = (t + [toks[i]], torch.cat([mk, k[i:i + 1]]), torch.cat([mv, v[i:i + 1]]))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data):
        s = data.draw(st.sampled_from(sorted(self.model)))
        self.cache.remove_sequence(s)
        del self.model[s]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), n=st.integers(0, 3))
    def fork(self, data, n):
        s = data.draw(st.sampled_from(sorted(self.model)))
        new = self._try(lambda: self.cache.fork(s, n))
        if new is not None:
            for t in new:
                self.model[t] = self.model[s]

    @invariant()
    def reads_back_exactly(self):
        assert sorted(self.cache.seq_ids) == sorted(self.model)
        for s, (toks, k, v) in self.model.items():
            assert self.cache.tokens(s) == toks
            rk, rv = self.cache.read(s)
            assert torch.equal(rk, k) and torch.equal(rv, v)

    @invariant()
    def chunks_accounted_once(self):
        paths = [self.cache.chunks_of(s) for s in self.model]
        live = {c for p in paths for c in p}
        assert self.cache.num_used_chunks == len(live)  # no leak: freed chunks return to the pool
        for c in live:
            assert self.cache._ref[c] == sum(c in p for p in paths)
        # No sequence reads one chunk twice. (Sharing by token ids is checked in
        # test_full_chunks_with_matching_tokens_are_shared.)
        for p in paths:
            assert len(set(p)) == len(p)

    @invariant()
    def table_is_valid_and_depth_first(self):
        table = self.cache.table()  # ChunkTable validation enforces contiguous sharing
        assert sorted(table.seq_ids) == sorted(self.model)


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
