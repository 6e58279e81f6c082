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
// stream, backend.py) are zero at every launch.
// ATTN_TK_FUSED_MERGE=1: each consumer warp counts its own rows after its stores (a fence and
// an atomic round trip on its path, every item). =2: the consumers only arrive on a shared-
// memory barrier; warp 2 of the producer warpgroup (idle otherwise) counts and merges.
#pragma once

#include "stacked_layout.cuh"
#include "stacked_sync.cuh"
#include <type_traits>

namespace attn_tk {

#if ATTN_TK_FUSED_MERGE
// Release before a count, acquire after the last one: acq_rel is all the pattern needs
// (__threadfence() is fence.sc, MEMBAR.SC.GPU in the SASS).
__device__ inline void fence_gpu() { asm volatile("fence.acq_rel.gpu;\n" ::: "memory"); }

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(bf16 x) { return __bfloat162float(x); }
__device__ inline float to_float(half x) { return __half2float(x); }

// acc += w * src[0 .. N), src aligned to its loads (the widest of 16, 8, 4 bytes that N
// values fill). Through L2 only (ld.global.cg): other SMs wrote these states during this
// launch, and this SM's L1 may hold older copies of their lines (lses of neighbouring rows
// share lines).
template<typename U, int N>
__device__ inline void add_cols(float (&acc)[N], float w, const U *src) {
    constexpr int BYTES = N * (int)sizeof(U);
    using V = std::conditional_t<BYTES % 16 == 0, int4, std::conditional_t<BYTES % 8 == 0, int2, int>>;
    constexpr int PER = (int)(sizeof(V) / sizeof(U));
    static_assert(BYTES % sizeof(V) == 0 && PER >= 1, "whole loads");
    #pragma unroll
    for (int c = 0; c < N / PER; c++) {
        const V raw = __ldcg(reinterpret_cast<const V *>(src) + c);
        const U *u = reinterpret_cast<const U *>(&raw);
        #pragma unroll
        for (int i = 0; i < PER; i++) acc[c * PER + i] += w * to_float(u[i]);
    }
}

// Row `row`'s nslot partial states into out / lse (natural log), as merge.cu does, by LANES
// lanes: lane q of them takes columns [q D / LANES, (q + 1) D / LANES). States with lse = -inf
// are never read; a row with none gets out = 0, lse = -inf.
template<typename T, int D, int LANES>
__device__ inline void merge_row(const common_args &a, long row, int q) {
    constexpr int N = D / LANES;
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
        fence_gpu();  // release: this thread's rows' states (and its quad's) before the counts
        const int c0 = held0 ? atomicAdd(a.merge_count + row0, states) : -states;
        const int c1 = held1 ? atomicAdd(a.merge_count + row1, states) : -states;
        last0 = c0 + states == a.nslot;
        last1 = c1 + states == a.nslot;
    }
    last0 = __shfl_sync(0xffffffffu, last0, lane & ~3);
    last1 = __shfl_sync(0xffffffffu, last1, lane & ~3);
    if (last0 || last1) fence_gpu();  // acquire: every writer's states before the reads
    #pragma unroll
    for (int half = 0; half < 2; half++) {
        if (!(half ? last1 : last0)) continue;
        const long row = half ? row1 : row0;
        merge_row<T, D, 4>(a, row, lane % 4);
        if (lane % 4 == 0) a.merge_count[row] = 0;  // zero again for the next launch
    }
}
#endif

#if ATTN_TK_FUSED_MERGE == 2
// The merger warp's variant: the consumers only arrive on epi_done[turn % EPI_BUFS] after each
// turn's epilogue (a shared-memory barrier: no fence, no atomic on their path), and warp 2 of
// the producer warpgroup, idle otherwise, counts the turn's rows (a fence, then 32 atomics at
// a time) and merges the rows it completes, a whole warp per row. epi_free[b] hands the
// barrier back, so that the consumers never run EPI_BUFS turns ahead of the merger.
constexpr int EPI_BUFS = 4;

// Count one item's rows (as its warpgroups wrote them: a lone kv-split item's two write two
// states a row, any other item one, plus one with FLAG_CLEAR_NEXT) and merge those completed.
template<typename T, int D>
__device__ inline void count_item(const common_args &a, const int *it) {
    const int lane = threadIdx.x % 32;
    const int flags = it[F_FLAGS];
    const bool kv = flags & FLAG_KV_SPLIT, paired = flags & (FLAG_PAIR | FLAG_PAIRED);
    const int states = kv && !paired ? 2 : 1 + ((flags & FLAG_CLEAR_NEXT) ? 1 : 0);
    const int row0 = it[F_ROW0], end = min(it[F_NROWS], row0 + (kv ? TILE : NWG * TILE));
    const int seq0 = it[F_SEQ0], h = it[F_HEAD];
    for (int j0 = row0; j0 < end; j0 += 32) {
        const int j = j0 + lane;
        const bool held = j < end;
        const long row = held ? (seq0 + j / a.r) * (long)a.hq + (long)h * a.r + j % a.r : 0;
        bool done_ = false;
        if (held) {
            fence_gpu();  // release: the CTA's stores of the turn (acquired through epi_done)
            done_ = atomicAdd(a.merge_count + row, states) + states == a.nslot;
        }
        unsigned todo = __ballot_sync(0xffffffffu, done_);
        if (todo) fence_gpu();  // acquire: every writer's states before the reads
        while (todo) {
            const int b = __ffs(todo) - 1;
            todo &= todo - 1;
            const long r = __shfl_sync(0xffffffffu, row, b);
            merge_row<T, D, 32>(a, r, lane);
            if (lane == 0) a.merge_count[r] = 0;  // zero again for the next launch
        }
    }
}

// Warp 2 of the producer warpgroup: the turns [first, last) of this CTA, in the consumers' order.
template<typename T, int D>
__device__ inline void merge_turns(const common_args &a, int first, int last, semaphore *epi_done, semaphore *epi_free) {
    int turn = 0;
    for (int i = first; i < last; i++, turn++) {
        const int *it = a.items + (long)i * ITEM_INTS;
        const bool pair = it[F_FLAGS] & FLAG_PAIR;
        wait(epi_done[turn % EPI_BUFS], (turn / EPI_BUFS) & 1);
        count_item<T, D>(a, it);
        if (pair) count_item<T, D>(a, it + ITEM_INTS);
        __syncwarp();
        if (threadIdx.x % 32 == 0) arrive(epi_free[turn % EPI_BUFS]);
        i += pair;
    }
}

// A consumer warp's end of a turn: its epilogue's stores are done (every lane).
__device__ inline void turn_stored(semaphore *epi_done, semaphore *epi_free, int turn) {
    __syncwarp();
    if (threadIdx.x % 32 == 0) {
        if (turn >= EPI_BUFS) wait(epi_free[turn % EPI_BUFS], ((turn / EPI_BUFS) - 1) & 1);
        arrive(epi_done[turn % EPI_BUFS]);  // release (cta): this warp's stores, ordered by __syncwarp
    }
    __syncwarp();
}
#endif

}  // namespace attn_tk
