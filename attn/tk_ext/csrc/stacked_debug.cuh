// Debug builds of the stacked kernel: where each warp waits (ATTN_TK_TRACE, for hangs) and
// per-item clocks (ATTN_TK_TIMELINE, for where the time goes). Both compile to nothing by default.
#pragma once

#include <cstdlib>
#include "stacked_layout.cuh"

namespace attn_tk {

using namespace kittens;

// Trace builds (ATTN_TK_NVCC_FLAGS=-DATTN_TK_TRACE): before each wait, lane 0 of every warp
// stores what it is about to wait on into a device buffer, which the host copies on another
// stream while a hung launch still runs (bench/tk_trace.py). Plain volatile stores, no fence:
// with host-mapped memory and a system-scope fence per wait, the 2-stage ring's hang (the
// done[] arrivals, below) did not occur on an H200. Off by default.
enum TraceEvent {
    TR_DONE = 1,      // producer waits done[s] before loading tile g
    TR_LOADED = 2,    // producer issued tile g
    TR_QEMPTY = 3,    // query warp waits q_empty before gathering item li
    TR_QLOADED = 4,   // query warp gathered item li
    TR_QFULL = 10,    // consumer waits q_full of item li
    TR_KFULL = 11,    // consumer waits k_full of tile g
    TR_VFULL = 12,    // consumer waits v_full of tile g
    TR_TURN = 13,     // consumer waits its ping-pong turn
    TR_XCHG = 15,     // consumer at the direct items' exchange barrier
    TR_EXIT = 99,     // the warp's role is finished
};
#ifdef ATTN_TK_TRACE
__device__ inline void trace(const common_args &a, int ev, int item, int g, int x) {
    if (a.trace && threadIdx.x % 32 == 0) {
        volatile int *p = a.trace + ((long)blockIdx.x * (NTHREADS / 32) + threadIdx.x / 32) * 4;
        p[0] = ev;
        p[1] = item;
        p[2] = g;
        p[3] = x;
    }
}
inline int *trace_ptr() {
    const char *e = std::getenv("ATTN_TK_TRACE_PTR");
    return e ? reinterpret_cast<int *>(std::strtoull(e, nullptr, 10)) : nullptr;
}
#else
__device__ inline void trace(const common_args &, int, int, int, int) {}
inline int *trace_ptr() { return nullptr; }
#endif

// Timeline builds (ATTN_TK_NVCC_FLAGS=-DATTN_TK_TIMELINE): lane 0 of each consumer
// warpgroup's first warp stores, per item, the SM's clock when it starts the item, when the
// item's query rows have arrived and when its epilogue is done, %globaltimer (ns) at the
// start, the cycles it spent in its k_full and in its v_full waits, and the clocks when its tile
// loop starts and ends and when its epilogue's stores start and have been issued, at [item,
// warpgroup, TimelineField] (bench/tk_timeline.py: where a launch's time goes, per kind of
// item; the clocks give durations, the timer aligns CTAs and converts cycles, the waits tell
// an item that waits for memory from one that computes). Off by default. (With
// ATTN_TK_SPREAD_ROWS, warpgroup 1's first warp holds rows 32-47 of a kv-split item: for a
// decode item of <= 32 rows its epilogue fields are those of a warp that stores nothing. A
// pair's items have fields from their own warpgroup only: [i, 0] and [i + 1, 1].)
enum TimelineField {
    TL_START = 0, TL_QREADY = 1, TL_END = 2, TL_TIMER = 3, TL_KWAIT = 4, TL_VWAIT = 5,
    TL_LOOP = 6,   // clock when the tile loop starts (queries in registers, state initialised)
    TL_TAIL = 7,   // clock when the tile loop is done (merge and epilogue follow)
    TL_EPI = 8,    // clock when the epilogue's stores start (after any merge of states)
    TL_STORED = 9, // clock when the epilogue's stores are issued
    // The query warp's, for the slot this warpgroup reads (a lone kv-split item: warpgroup 0's
    // record): its clock when it starts gathering the rows and when it has issued their
    // copies. With TL_START and TL_QREADY they tell a slot gathered late from copies that
    // land late (the first row-split items wait ~4 us at a kernel's start).
    TL_QGATHER = 10,
    TL_QISSUED = 11,
    TL_FIELDS = 12
};
#ifdef ATTN_TK_TIMELINE
__device__ inline void timeline(const common_args &a, int item, int wg, int field, long long v = -1) {
    if (a.timeline && threadIdx.x % 128 == 0) {
        unsigned long long *p = a.timeline + ((long)item * NWG + wg) * TL_FIELDS;
        p[field] = v >= 0 ? (unsigned long long)v : clock64();
        if (field == TL_START) {
            unsigned long long t;
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
            p[TL_TIMER] = t;
        }
    }
}
// The query warp's fields (TL_QGATHER, TL_QISSUED) of item ``item``'s warpgroup ``wg``, by its lane 0.
__device__ inline void timeline_q(const common_args &a, int item, int wg, int field) {
    if (a.timeline && laneid() == 0) a.timeline[((long)item * NWG + wg) * TL_FIELDS + field] = clock64();
}
inline unsigned long long *timeline_ptr() {
    const char *e = std::getenv("ATTN_TK_TIMELINE_PTR");
    return e ? reinterpret_cast<unsigned long long *>(std::strtoull(e, nullptr, 10)) : nullptr;
}
// A ring wait, its cycles added to acc (a long long of the item).
#define TL_WAIT(acc, call) do { const long long t0_ = clock64(); call; acc += clock64() - t0_; } while (0)
#else
__device__ inline void timeline(const common_args &, int, int, int, long long = -1) {}
__device__ inline void timeline_q(const common_args &, int, int, int) {}
inline unsigned long long *timeline_ptr() { return nullptr; }
#define TL_WAIT(acc, call) call
#endif

// Ablation builds (ATTN_TK_NVCC_FLAGS=-DATTN_TK_ABLATE=BITS), for timing only: their results
// are wrong. Bit 0 skips the consumers' softmax, bit 1 their Q K^T wgmma, bit 2 their P V
// wgmma; everything else (ring, turns, epilogue) runs as usual, so bench/tk_timeline.py on
// such a build tells how much of a loop each part holds up (H200: logs/s11-tk-timeline-ablate.log).
// Bits 1 and 2 act on every consumer warpgroup. Bit 4 skips only the decode warpgroup's wgmmas
// (the *_dwg units), bit 5 only the prefix warpgroups': which of the two, beside the other, sets
// the decode warpgroup's tile time (the tensor pipe they share, or its own chain).
#ifndef ATTN_TK_ABLATE
#define ATTN_TK_ABLATE 0
#endif
constexpr bool ABL_SM = !(ATTN_TK_ABLATE & 1);
constexpr bool ABL_QK = !(ATTN_TK_ABLATE & 2) && !(ATTN_TK_ABLATE & 32), ABL_PV = !(ATTN_TK_ABLATE & 4) && !(ATTN_TK_ABLATE & 32);
constexpr bool ABL_DEC_QK = !(ATTN_TK_ABLATE & 2) && !(ATTN_TK_ABLATE & 16);
constexpr bool ABL_DEC_PV = !(ATTN_TK_ABLATE & 4) && !(ATTN_TK_ABLATE & 16);
// Bit 3 skips the epilogue's stores of row-split items (what a staged, coalesced store could win at most).
constexpr bool ABL_ROW_STORES = !(ATTN_TK_ABLATE & 8);

}  // namespace attn_tk
