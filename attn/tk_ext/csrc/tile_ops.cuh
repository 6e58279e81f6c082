// Register-tile helpers of the consumer warpgroups of stacked.cuh: compiler fences around
// asynchronous wgmma, and the online-softmax step of one 16-row score tile per warp.
#pragma once

#include "kittens.cuh"

namespace attn_tk {

using namespace kittens;

constexpr int TILE = 64;             // keys per K/V tile, and rows per consumer warpgroup

// Pins a float register tile's values at this point of the program: an asm statement that
// "writes" them, ordered with the (volatile) wgmma waits, so that no use is scheduled above a
// preceding wgmma.wait_group (the compiler sees the wgmma's outputs as ready when it is
// issued, not when the wait returns) and no computation of them sinks below a following one.
template<typename RT>
__device__ inline void reg_fence(RT &r) {
    #pragma unroll
    for (int i = 0; i < RT::height; i++) {
        #pragma unroll
        for (int j = 0; j < RT::width; j++) {
            #pragma unroll
            for (int k = 0; k < RT::packed_per_tile; k++) {
                asm volatile("" : "+f"(r.tiles[i][j].data[k].x) :: "memory");
                asm volatile("" : "+f"(r.tiles[i][j].data[k].y) :: "memory");
            }
        }
    }
}

// The same for a column vector of a 16-row tile (two floats per thread).
template<typename V>
__device__ inline void vec_fence(V &v) {
    asm volatile("" : "+f"(v[0][0].x), "+f"(v[0][0].y) :: "memory");
}

// TK's wgmma calls fence with fence.proxy.async too (a MEMBAR.ALL.CTA, which waits for this
// thread's outstanding memory operations, e.g. the ring arrivals). The pipelined loop's wgmma
// operands are registers and TMA-written tiles (already async proxy), so it issues only the
// register fence that wgmma requires.
template<typename RT>
__device__ inline void wgmma_fence(RT &acc) {
    reg_fence(acc);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

// Rows [valid, TILE) of a ring stage's V tile <- 0, by the 128 threads of one warpgroup (tid its
// index in it), fenced for the wgmma that reads the tile next; the caller syncs the warpgroup.
// Why: TMA loads whole 64-key tiles, so a tile that ends a ragged suffix or a partial chunk
// holds whatever the cache holds past the length (stale or uninitialised memory), and the
// masked keys' P = 0 times V = NaN or inf is NaN. K needs nothing: masked scores are set to
// -inf (mask_tail), not added to. A 64-column block of a swizzled tile stores its rows one
// after the other, 128 bytes each (TK's st::idx: the swizzle permutes 16-byte chunks within a
// row), so a row's bytes are the same 128 whatever the swizzle.
template<typename KV>
__device__ inline void zero_rows_from(KV &v, int valid, int tid) {
    static_assert(KV::swizzle_bytes == 128 && KV::cols * sizeof(typename KV::dtype) % 128 == 0,
                  "128-byte rows in 64-column blocks");
    constexpr int BLOCKS = KV::cols * sizeof(typename KV::dtype) / 128;
    // Thread tid clears 16-byte chunk tid % 8 of rows valid + tid / 8, + 16, ... of every block.
    char *p = reinterpret_cast<char *>(&v.data[0]) + (tid % 8) * 16;
    for (int r = valid + tid / 8; r < KV::rows; r += 16) {
        #pragma unroll
        for (int b = 0; b < BLOCKS; b++) *reinterpret_cast<int4 *>(p + (b * KV::rows + r) * 128) = make_int4(0, 0, 0, 0);
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // generic writes, then wgmma (async proxy) reads
}

// Sets the scores of keys >= valid (a tile past the end of its source) to -inf. In a row
// layout tile, data[k] of a 16 x 16 subtile holds columns 2 * (lane % 4) + {0, 1}, plus 8 when
// k >= 2, of row lane / 4, plus 8 when k is odd.
template<typename ATT>
__device__ inline void mask_tail(ATT &att, int valid) {
    const int lane = threadIdx.x % 32;
    #pragma unroll
    for (int j = 0; j < ATT::width; j++) {
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            int col = j * 16 + 2 * (lane % 4) + (k >= 2 ? 8 : 0);
            if (col >= valid) att.tiles[0][j].data[k].x = -INFINITY;
            if (col + 1 >= valid) att.tiles[0][j].data[k].y = -INFINITY;
        }
    }
}

// Sets the scores of rows outside [lo, hi) to -inf (a walked suffix tile: its sequence's rows
// only); row_base is the item's row of this warp's first. Rows lane / 4 and lane / 4 + 8 (mask_tail's layout).
// softmax_step_fast then keeps such a row's max and adds nothing to it, provided the row has a
// finite max already (plan.walk_suffixes puts a tile with keys for every row first).
template<typename ATT>
__device__ inline void mask_rows(ATT &att, int row_base, int lo, int hi) {
    const int ra = row_base + (threadIdx.x % 32) / 4, rb = ra + 8;
    const bool out_a = ra < lo || ra >= hi, out_b = rb < lo || rb >= hi;
    #pragma unroll
    for (int j = 0; j < ATT::width; j++) {
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            if ((k & 1) ? out_b : out_a) att.tiles[0][j].data[k] = make_float2(-INFINITY, -INFINITY);
        }
    }
}

// One online-softmax step on a raw score tile: scale to log2 units, mask keys >= valid, update
// the running max m and sum l, leave P = exp2(s - m) in att and the factor exp2(m_old - m) that
// the output accumulated so far must be rescaled by in alpha (0 on the first tile: m_old = -inf).
// m stays finite: every processed tile has a valid key.
template<typename ATT, typename V>
__device__ inline void softmax_step(ATT &att, V &m, V &l, V &alpha, int valid, float scale_log2) {
    warp::mul(att, att, scale_log2);
    if (valid < ATT::cols) mask_tail(att, valid);
    warp::copy(alpha, m);
    warp::row_max(m, att, m);
    warp::sub_row(att, att, m);
    warp::exp2(att, att);
    warp::sub(alpha, alpha, m);
    warp::exp2(alpha, alpha);
    warp::mul(l, l, alpha);
    warp::row_sum(l, att, l);
}

// 2^x in one MUFU.EX2 (exp2f adds three instructions of denormal handling per call); 2^-inf = 0.
__device__ inline float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Lazy rescaling (as in FlashAttention-4): a warp keeps its rows' running max m while no row's
// new scores exceed it by more than this (log2 units), so that most tiles need no rescale of
// the output accumulator (64 FMULs per thread at D = 128, a sixth of a tile's instructions).
// Exact in real arithmetic: o, l and the lse all use the same m. P = 2^(s - m) <= 2^8 then,
// far inside float32 and bf16 / fp16 range (P is rounded to T with the same relative error).
// ATTN_TK_RESCALE_LOG2=-1e30f rescales on every tile (as in H200 run 0008).
#ifndef ATTN_TK_RESCALE_LOG2
#define ATTN_TK_RESCALE_LOG2 8.f
#endif
constexpr float RESCALE_LOG2 = ATTN_TK_RESCALE_LOG2;

// softmax_step for the pipelined loop, where the softmax must fit under the tensor cores' time:
// the scale is folded into exp2's argument (one FFMA + one MUFU per score; m is bit-identical,
// scaling by a positive constant commutes with max and rounding), and l holds this thread's
// partial row sums (a quarter of the tile's columns), so the only shuffles per tile are the max's;
// row_lanes_sum completes l once per item. Returns whether o must be rescaled by alpha: false
// when the warp keeps its max (RESCALE_LOG2), a warp-uniform answer.
template<typename ATT, typename V>
__device__ inline bool softmax_step_fast(ATT &att, V &m, V &l, V &alpha, int valid, float scale_log2) {
    if (valid < ATT::cols) mask_tail(att, valid);
    float mx[2] = {-INFINITY, -INFINITY};  // rows lane / 4 and lane / 4 + 8 (m[0][0].x, .y)
    #pragma unroll
    for (int j = 0; j < ATT::width; j++) {
        #pragma unroll
        for (int k = 0; k < 4; k++)
            mx[k & 1] = fmaxf(mx[k & 1], fmaxf(att.tiles[0][j].data[k].x, att.tiles[0][j].data[k].y));
    }
    #pragma unroll
    for (int r = 0; r < 2; r++) {  // the four lanes of a row differ in lane bits 0 and 1
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    }
    float2 &mv = m[0][0];
    const float c0 = mx[0] * scale_log2, c1 = mx[1] * scale_log2;
    // The first tile always rescales: m = -inf fails the test (every processed tile has a
    // valid key in each row, so c0 and c1 are finite).
    const bool keep = __all_sync(0xffffffffu, c0 <= mv.x + RESCALE_LOG2 && c1 <= mv.y + RESCALE_LOG2);
    float n0 = mv.x, n1 = mv.y;
    if (keep) {
        alpha[0][0] = make_float2(1.f, 1.f);
    } else {
        n0 = fmaxf(mv.x, c0);
        n1 = fmaxf(mv.y, c1);
        alpha[0][0] = make_float2(ex2(mv.x - n0), ex2(mv.y - n1));
        mv = make_float2(n0, n1);
    }
    float sum[2] = {0.f, 0.f};
    #pragma unroll
    for (int j = 0; j < ATT::width; j++) {
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            float2 &d = att.tiles[0][j].data[k];
            const float n = (k & 1) ? n1 : n0;
            d.x = ex2(fmaf(d.x, scale_log2, -n));
            d.y = ex2(fmaf(d.y, scale_log2, -n));
            sum[k & 1] += d.x + d.y;
        }
    }
    l[0][0] = make_float2(l[0][0].x * alpha[0][0].x + sum[0], l[0][0].y * alpha[0][0].y + sum[1]);
    return !keep;
}

// Completes softmax_step_fast's per-thread partial row sums.
template<typename V>
__device__ inline void row_lanes_sum(V &l) {
    float2 &v = l[0][0];
    v.x += __shfl_xor_sync(0xffffffffu, v.x, 1);
    v.y += __shfl_xor_sync(0xffffffffu, v.y, 1);
    v.x += __shfl_xor_sync(0xffffffffu, v.x, 2);
    v.y += __shfl_xor_sync(0xffffffffu, v.y, 2);
}

}  // namespace attn_tk
