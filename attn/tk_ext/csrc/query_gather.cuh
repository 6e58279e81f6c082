// The stacked kernel's query warp: gathers an item's stacked query rows into a query slot with
// cp.async and completes the slot's barrier.
#pragma once

#include "stacked_layout.cuh"
#include "stacked_debug.cuh"
#include "unit_queue.cuh"

namespace attn_tk {

using namespace kittens;

// Loads the valid rows of a 64-row block of stacked queries into shared memory, by one warp,
// with cp.async so that all of a lane's 16-byte copies are in flight at once. The rows are
// gathered (row j is sequence seq0 + j / r, head h * r + j % r), so this is not a TMA box.
// Rows past nrows are not written: they keep an earlier item's (finite) rows, or the zeros of
// the kernel's start, and the epilogue never stores them. Copying only valid rows matters for
// decode items of a few rows (a tree's leaves: 4 of 64): the query warp issued ~2200
// instructions per item zero-filling the rest, and the consumers waited on it (Nsight
// Compute, tree-3level: a quarter of all warp samples at the q_full wait).
// ROWS, lo: only the tile's rows [lo, lo + ROWS) (a consumer warp gathering its own 16 rows:
// ATTN_TK_SELF_Q).
template<typename T, int D, typename QT, int ROWS = TILE>
__device__ inline void load_q(QT &dst, const common_args &a, int seq0, int h, int row0, int nrows, int lo = 0) {
    constexpr int VEC = 8;  // 16 bytes
    constexpr int CHUNKS = D / VEC;
    const T *q = reinterpret_cast<const T *>(a.q);
#if ATTN_TK_QROWS
    // A lane copies one 16-byte column of every STEP-th row: its sequence and head advance
    // by a fixed (STEP / r, STEP % r) per row step, so the runtime divisions by r happen once
    // per call instead of per copy (they were most of the ~3200 instructions per lane that
    // gathering a row-split item's 128 rows took: 3-4 us at a kernel's start).
    constexpr int STEP = 32 / CHUNKS;
    const int lane = threadIdx.x % 32, col = (lane % CHUNKS) * VEC;
    const int rows = max(0, min(lo + ROWS, nrows - row0));
    int row = lo + lane / CHUNKS;
    int b = (row0 + row) / a.r, hr = (row0 + row) - b * a.r;  // sequence seq0 + b, head h * r + hr
    const int db = STEP / a.r, dr = STEP - db * a.r;
    const T *base = q + (long)seq0 * a.q_sb + (long)h * a.r * a.q_sh + col;
    #pragma unroll 2  // (4 makes the 56-register producer warps spill)
    for (; row < rows; row += STEP) {
        const T *src = base + (long)b * a.q_sb + (long)hr * a.q_sh;
        uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(&dst[int2{row, col}]));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(s), "l"(src) : "memory");
        b += db;
        hr += dr;
        if (hr >= a.r) { hr -= a.r; b++; }
    }
#else  // all 64 rows, zero-filled past nrows (as in H200 run 0016)
    for (int i = threadIdx.x % 32; i < TILE * CHUNKS; i += 32) {
        const int row = i / CHUNKS, col = (i % CHUNKS) * VEC;
        const int j = row0 + row;
        const T *src = q;
        int bytes = 0;
        if (j < nrows) {
            const long b = seq0 + j / a.r, hh = (long)h * a.r + j % a.r;
            src = q + b * a.q_sb + hh * a.q_sh + col;
            bytes = 16;
        }
        uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(&dst[int2{row, col}]));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(s), "l"(src), "r"(bytes) : "memory");
    }
#endif
}

// Completes q_full of a slot once the query warp's copies into it have landed. Consumers read
// query tiles with ld.shared (Q K^T takes Q from registers), so the generic proxy suffices:
// no fence.proxy.async.
__device__ inline void q_signal(semaphore &full) {
#if ATTN_TK_QASYNC
    const uint32_t bar = static_cast<uint32_t>(__cvta_generic_to_shared(&full));
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" :: "r"(bar) : "memory");
#else
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncwarp();
    if (laneid() == 0) arrive(full, 1);
#endif
}

// The query warp's loop: gathers the stacked query rows of the CTA's units into the slot
// ring, as far ahead as free slots allow. A row-split item's warpgroups take a slot each, so do
// a pair's two items; a lone kv-split item takes one (both warpgroups read it).
template<typename T, int D, typename QT>
__device__ inline void gather_queries(const common_args &a, int first, int last, const int *head, unit_feed *feed,
                                      QT *q_smem, semaphore *q_full, semaphore *q_empty, semaphore *q_first) {
    int qs = 0;  // slots used so far
    int k = 0;   // units after the first
    for (int i = first_unit(a, first, last); i >= 0; i = next_unit<true>(a, *feed, k++, i + 1, last)) {
        const int *it = item_at(a, head, i, first);
        const int fl = it[F_FLAGS];
        const bool kv = fl & FLAG_KV_SPLIT, pair = fl & FLAG_PAIR;
        for (int w = 0; w < (kv && !pair ? 1 : NWG); w++, qs++) {
            const int b = qs % QSLOTS;
            const int *iw = it + (pair ? w * ITEM_INTS : 0);
            trace(a, TR_QEMPTY, i, qs, b);
            if (qs >= QSLOTS) wait(q_empty[b], ((qs / QSLOTS) - 1) & 1);
            if (!(ATTN_TK_SELF_Q && i == first && !(kv && !pair))) {  // not self-gathered (stacked_layout.cuh)
                timeline_q(a, i + (pair ? w : 0), w, TL_QGATHER);
                load_q<T, D>(q_smem[b], a, iw[F_SEQ0], iw[F_HEAD], iw[F_ROW0] + (kv ? 0 : w * TILE), iw[F_NROWS]);
                q_signal(q_full[b]);
                timeline_q(a, i + (pair ? w : 0), w, TL_QISSUED);
            }
            trace(a, TR_QLOADED, i, qs, b);
        }
        if (ATTN_TK_Q_FIRST && i == first) {  // (stacked_layout.cuh)
            // =1: the first slot; =2: all of the first unit's. Nothing more is gathered first.
            for (int b = 0; b < (ATTN_TK_Q_FIRST == 2 ? qs : 1); b++) wait(q_full[b], 0);
            __syncwarp();
            if (laneid() == 0) arrive(*q_first);
        }
        i += pair;
    }
    // Its copies land before the warp exits (their arrives still count).
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    trace(a, TR_EXIT, last, 0, 0);
}

}  // namespace attn_tk
