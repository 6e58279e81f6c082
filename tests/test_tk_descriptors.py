"""The tk extension's reuse of TMA descriptors across launches (csrc/tma_cache.h).

A descriptor is kept by the tensor's address and sizes. On the CPU the cache itself is compiled
with a stand-in layout that counts its encodes (the header needs only the C++ standard library);
on the GPU, views that start at one address but differ in size, and data rewritten in place,
must each give the oracle's answer.
"""
from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest
import torch

import attn
from attn.problems import chunk_problem, shared_prefix_problem
from attn.table import ChunkTable
from attn.testing import Oracle
from attn.tk_ext.build import CSRC
from attn.workloads import ChunkInputs, Workload, make_inputs, to_chunk_form
from conftest import require_backend

CACHE_PROBE = r"""
#include "tma_cache.h"
#include <cstdio>
#include <stdexcept>
static int encodes = 0;
struct fake_gl {  // stands in for a ThunderKittens gl: its constructor is the encode
    const float *p; unsigned n[4];
    fake_gl(const float *p_, unsigned b, unsigned d, unsigned r, unsigned c) : p(p_), n{b, d, r, c} {
        if (b == 0) throw std::runtime_error("encode failed");
        encodes++;
    }
};
struct other_gl : fake_gl { using fake_gl::fake_gl; };  // another type: its own cache
#define CHECK(c) do { if (!(c)) { std::printf("FAIL line %d: %s\n", __LINE__, #c); return 1; } } while (0)
int main() {
    using attn_tk_host::make_gl;
    static float buf[64];
    fake_gl a = make_gl<fake_gl>(buf, 1, 2, 3, 4);
    CHECK(encodes == 1 && a.p == buf && a.n[3] == 4);
    make_gl<fake_gl>(buf, 1, 2, 3, 4);
    CHECK(encodes == 1);                                    // same address and sizes: a hit
    fake_gl b = make_gl<fake_gl>(buf, 1, 5, 3, 4);
    CHECK(encodes == 2 && b.n[1] == 5);                     // same address, other sizes: a miss
    make_gl<fake_gl>(buf + 8, 1, 2, 3, 4);
    CHECK(encodes == 3);                                    // other address: a miss
    make_gl<other_gl>(buf, 1, 2, 3, 4);
    CHECK(encodes == 4);                                    // other layout type: a miss
    bool threw = false;
    try { make_gl<fake_gl>(buf, 0, 2, 3, 4); } catch (const std::runtime_error &) { threw = true; }
    CHECK(threw);
    try { make_gl<fake_gl>(buf, 0, 2, 3, 4); } catch (const std::runtime_error &) { threw = false; }
    CHECK(!threw);                                          // a failed encode is not cached
    make_gl<fake_gl>(buf, 1, 2, 3, 4);
    CHECK(encodes == 4);                                    // still held
    const int n = attn_tk_host::GL_CACHE_SLOTS;
    for (int i = 0; i < n; i++) make_gl<fake_gl>(buf, 1, 2, 3, 100 + i);
    CHECK(encodes == 4 + n);
    make_gl<fake_gl>(buf, 1, 2, 3, 100 + n - 1);
    CHECK(encodes == 4 + n);                                // the newest are held
    make_gl<fake_gl>(buf, 1, 2, 3, 4);
    CHECK(encodes == 5 + n);                                // the oldest was replaced
    std::printf("ok %d\n", encodes);
    return 0;
}
"""


def _compile_and_run(tmp_path, source: str, *defines: str) -> subprocess.CompletedProcess:
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++ / c++) on PATH to compile the cache's probe")
    src, exe = tmp_path / "probe.cpp", tmp_path / "probe"
    src.write_text(source)
    subprocess.run([cxx, "-std=c++17", "-O1", *defines, "-I", str(CSRC), str(src), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    return subprocess.run([str(exe)], capture_output=True, text=True)


def test_cache_reuses_a_layout_only_for_the_same_type_address_and_sizes(tmp_path):
    r = _compile_and_run(tmp_path, CACHE_PROBE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == f"ok {5 + 32}"


def test_cache_off_encodes_at_every_launch(tmp_path):
    probe = CACHE_PROBE.split("int main() {")[0] + """int main() {
    static float buf[4];
    for (int i = 0; i < 3; i++) attn_tk_host::make_gl<fake_gl>(buf, 1, 2, 3, 4);
    std::printf("%d\\n", encodes);
    return 0;
}
"""
    r = _compile_and_run(tmp_path, probe, "-DATTN_TK_GL_CACHE=0")
    assert r.returncode == 0 and r.stdout.strip() == "3", r.stdout + r.stderr


# ---- on the GPU ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tk():
    return require_backend("tk")


def _judged(problem, out, lse):
    verdict = Oracle(problem).judge(out, lse)
    assert verdict.ok, str(verdict)


@pytest.mark.gpu
def test_gpu_level_views_at_one_address(tk):
    """A level's and the suffix's views that share their first element's address: longer,
    shorter and longer again (a descriptor kept by address alone would read the wrong keys),
    then new values written in place."""
    w = Workload("", 8, 8, 2, ((1, 448),), 100, 128, ragged=True)
    full = make_inputs(w, torch.bfloat16, "cuda", seed=21)
    pk, pv = full.prefix_k[0], full.prefix_v[0]
    for p_len, b in ((448, 8), (130, 8), (448, 3), (64, 8), (448, 8)):
        inp = dataclasses.replace(full, q=full.q[:b], prefix_k=[pk[:, :p_len]], prefix_v=[pv[:, :p_len]],
                                  suffix_k=full.suffix_k[:b], suffix_v=full.suffix_v[:b],
                                  suffix_lens=full.suffix_lens[:b])
        assert inp.prefix_k[0].data_ptr() == pk.data_ptr() and inp.suffix_k.data_ptr() == full.suffix_k.data_ptr()
        out, lse = attn.shared_prefix_attention(*inp.args(), return_lse=True, backend="tk")
        _judged(shared_prefix_problem(*inp.args()), out, lse)
    pk.mul_(-0.5)
    full.suffix_v.add_(1.0)
    out, lse = attn.shared_prefix_attention(*full.args(), return_lse=True, backend="tk")
    _judged(shared_prefix_problem(*full.args()), out, lse)


@pytest.mark.gpu
def test_gpu_chunk_pool_views_at_one_address(tk):
    """A chunk pool's view of its first n chunks, then of all 2n with the table moved to the
    second half (a descriptor kept from the n-chunk view would read zeros there)."""
    w = Workload("", 8, 8, 2, ((1, 200), (2, 70)), 90, 128, ragged=True)
    inp = to_chunk_form(make_inputs(w, torch.bfloat16, "cuda", seed=22), 64, shuffle=True, seed=22)
    n = inp.k_chunks.shape[0]
    kbig = torch.cat([inp.k_chunks, inp.k_chunks])
    vbig = torch.cat([inp.v_chunks, inp.v_chunks])
    lens = inp.table.chunk_lens.cpu()
    first = ChunkInputs(inp.q, kbig[:n], vbig[:n], inp.table)
    sc = inp.table.seq_chunks.cpu()
    moved = ChunkTable.from_seq_chunks(torch.where(sc >= 0, sc + n, sc), torch.cat([lens, lens]),
                                       device=inp.q.device)
    second = ChunkInputs(inp.q, kbig, vbig, moved)
    for c in (first, second, first):
        assert c.k_chunks.data_ptr() == kbig.data_ptr()
        out, lse = attn.chunk_attention(*c.args(), return_lse=True, backend="tk")
        _judged(chunk_problem(*c.args()), out, lse)
