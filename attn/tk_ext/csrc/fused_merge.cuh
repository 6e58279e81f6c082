// ATTN_TK_FUSED_MERGE: the stacked kernel merges each query row's partial states itself, in
// the item that writes the row's last state, so that an op needs no merge launch.
//
// The merge kernel runs after the whole stacked grid, from states that are still in L2
// (Nsight Compute with caches flushed: 7.5-8.5 us on tree-3level, hydragen-mqa, gqa-8b, beside
// stacked kernels of 46-160 us, whose CTAs end up to ~9 us apart). Here each thread that
// writes a (slot, row) state counts it on the row's counter (atomicAdd after a fence, the
// "last block" pattern of CUDA's threadFenceReduction sample); the write that brings the count
// to nslot is the row's last, and the four lanes of its quad merge the row at once. Only
// covered plans fuse (every (slot, row) written by one item: plan.clear_unwritten), whose
// rows all count to nslot. The merger sets the counter back to 0, so the counters (per
// stream, backend.py) are zero at every launch and CUDA-graph replays need no memset.
#pragma once

#include "stacked_layout.cuh"
#include "stacked_sync.cuh"

namespace attn_tk {

#if ATTN_TK_FUSED_MERGE
__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(bf16 x) { return __bfloat162float(x); }
__device__ inline float to_float(half x) { return __half2float(x); }

// acc += w * src[0 .. N), src 16-byte aligned. Through L2 only (ld.global.cg): other SMs wrote
// these states during this launch, and this SM's L1 may hold older copies of their lines
// (lses of neighbouring rows share lines).
template<typename U, int N>
__device__ inline void add_cols(float (&acc)[N], float w, const U *src) {
    constexpr int PER = 16 / (int)sizeof(U);
    static_assert(N % PER == 0, "whole 16-byte loads");
    #pragma unroll
    for (int c = 0; c < N / PER; c++) {
        const int4 raw = __ldcg(reinterpret_cast<const int4 *>(src) + c);
        const U *u = reinterpret_cast<const U *>(&raw);
        #pragma unroll
        for (int i = 0; i < PER; i++) acc[c * PER + i] += w * to_float(u[i]);
    }
}

// Row `row`'s nslot partial states into out / lse (natural log), as merge.cu does: lane q of
// the quad takes columns [q D / 4, (q + 1) D / 4). States with lse = -inf are never read; a
// row with none gets out = 0, lse = -inf.
template<typename T, int D>
__device__ inline void merge_row_quad(const common_args &a, long row, int q) {
    constexpr int N = D / 4;
    const long R = a.rows_total;
    float m = -INFINITY;
    for (int s = 0; s < a.nslot; s++) m = fmaxf(m, __ldcg(a.part_lse + s * R + row));
    float acc[N];
    #pragma unroll
    for (int i = 0; i < N; i++) acc[i] = 0.f;
    float l = 0.f;
    if (m != -INFINITY) {
        for (int s = 0; s < a.nslot; s++) {
            const float ls = __ldcg(a.part_lse + s * R + row);
            if (ls == -INFINITY) continue;
            const float w = __expf(ls - m);
            l += w;
            const long at = (s * R + row) * D + q * N;
            if (a.half_parts) add_cols<T, N>(acc, w, reinterpret_cast<const T *>(a.part_out) + at);
            else add_cols<float, N>(acc, w, reinterpret_cast<const float *>(a.part_out) + at);
        }
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    T *dst = reinterpret_cast<T *>(a.out) + row * D + q * N;
    #pragma unroll
    for (int i = 0; i < N; i += 2) store2<T>(dst + i, acc[i] * inv, acc[i + 1] * inv);
    if (q == 0) a.lse[row] = l > 0.f ? m + logf(l) : -INFINITY;
}

// After a warp's epilogue stores: for each of this thread's two rows (MMA rows lane / 4 and
// lane / 4 + 8, `held`: a row of the item this warp stored), count its state(s) and, where that
// was the row's last, merge the row. Every lane of the warp must call it. One fence for both
// rows, and both counts in flight at once: the fence waits for this thread's stores, and the
// counts' round trip is the epilogue's new latency (a cost per item that the merge launch it
// replaces must outweigh).
template<typename T, int D, typename ROW>
__device__ inline void count_and_merge(const common_args &a, bool held0, bool held1, int states, ROW row_of) {
    const int lane = threadIdx.x % 32;
    __syncwarp();  // the quads' stores of both rows come before their leaders' fences
    const long row0 = held0 ? row_of(0) : 0, row1 = held1 ? row_of(1) : 0;
    int last0 = 0, last1 = 0;
    if ((held0 || held1) && lane % 4 == 0) {
        __threadfence();  // release: this thread's rows' states (and its quad's) before the counts
        const int c0 = held0 ? atomicAdd(a.merge_count + row0, states) : -states;
        const int c1 = held1 ? atomicAdd(a.merge_count + row1, states) : -states;
        last0 = c0 + states == a.nslot;
        last1 = c1 + states == a.nslot;
    }
    last0 = __shfl_sync(0xffffffffu, last0, lane & ~3);
    last1 = __shfl_sync(0xffffffffu, last1, lane & ~3);
    if (last0 || last1) __threadfence();  // acquire: every writer's states before the reads
    #pragma unroll
    for (int half = 0; half < 2; half++) {
        if (!(half ? last1 : last0)) continue;
        const long row = half ? row1 : row0;
        merge_row_quad<T, D>(a, row, lane % 4);
        if (lane % 4 == 0) a.merge_count[row] = 0;  // zero again for the next launch
    }
}
#endif

}  // namespace attn_tk
