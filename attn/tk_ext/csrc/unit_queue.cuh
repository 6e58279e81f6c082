// The stacked kernel's unit queue: CTAs take their units (an item, or a pair's two) from a
// device-side counter as they go, instead of running a range the host fixed.
//
// Why: the host balances a static plan by its cost model, but it cannot know a ragged suffix's
// length without a sync, and its units are coarse (chunkattn-mha: 32 prefix pairs of ~54 us beside
// 512 suffix pairs of ~12 us on an H100), so its CTAs ended 46-66 us into the kernel (median 63;
// bench/results/nvidia-h100-80gb-hbm3/logs/0038-tk-timeline.log). Taken from a queue, a CTA that
// ends early takes more; triton's grid is balanced by the hardware the same way.
// Measured, it did not pay (H100, session 34, runs 0016-0019: attn/tk_ext/unit_queue.py enabled()):
// the kernel is bound by DRAM bandwidth, and the CTAs that run on after the early ones end get
// their share of it, so evening out the ends saved at most 1 %. Off by default (ATTN_TK_QUEUE).
//
// The host (schedule.queue_order) lists the units largest first. Each CTA's first unit is static
// (in its head): CTA c < front takes units[c], CTA c >= front units[n - 1 - (c - front)], so that
// as in the static plan's mixed order, half of the CTAs start on the long, compute-bound units and
// half on the short, memory-bound ones. After that one thread of the CTA (the fetcher) claims the
// next unit from its end with one 64-bit atomicAdd: front CTAs count in the low half, back CTAs in
// the high half, and with lo, hi the old counts the claim is units[front + lo] or
// units[n - 1 - (ctas - front) - hi], valid while ctas + lo + hi < n.
//
// The fetcher publishes each claimed row in a one-entry mailbox in shared memory that the CTA's
// readers (the producer thread, the query warp, the 8 consumer warps) read in turn; it claims the
// next unit only once all of them have read this one, i.e. once the consumers start the unit the
// entry names. So a CTA holds one unit ahead (its producer and query warp run ahead into it), and
// the claim of the one after waits until the CTA needs it. -1 ends the CTA's list.
//
// The counter is left zero: the last CTA to be done claiming resets it, so the next launch on the
// same stream starts from zero without a memset (the host gives each stream, and each captured
// call, a counter of its own: attn/tk_ext/unit_counters.py).
#pragma once

#include "stacked_layout.cuh"

namespace attn_tk {

using namespace kittens;

// Readers of a mailbox entry: the producer thread, the query warp and every consumer warp.
constexpr int FEED_READERS = 2 + NWG * 4;

struct unit_feed {
    int row;          // the next unit's first item row, or -1: none
    semaphore full;   // count 1: the fetcher has written row
    semaphore empty;  // count FEED_READERS: every reader has read it
};

__device__ inline void init_feed(unit_feed &f) {
    init_semaphore(f.full, 1, 0);
    init_semaphore(f.empty, FEED_READERS, 0);
}

// The fetcher's loop (one thread). Entry j names the CTA's unit j + 1.
__device__ inline void fetch_units(const common_args &a, unit_feed &f) {
    const int ctas = gridDim.x;
    const bool front = (int)blockIdx.x < a.front;
    for (int j = 0;; j++) {
        if (j > 0) wait(f.empty, (j - 1) & 1);  // claimed only once the CTA starts the unit before it
        const unsigned long long old = atomicAdd(a.queue, front ? 1ull : 1ull << 32);
        const int lo = (int)(old & 0xffffffffu), hi = (int)(old >> 32);
        int row = -1;
        if (ctas + lo + hi < a.nunits) row = a.units[front ? a.front + lo : a.nunits - 1 - (ctas - a.front) - hi];
        f.row = row;
        arrive(f.full);
        if (row < 0) break;
    }
    // Every claim of this CTA is made; the last CTA to get here resets the counter for the next
    // launch (no claim of this one can follow: each CTA stops at its first claim past the end).
    __threadfence();
    if (atomicAdd(a.queue + 1, 1ull) == (unsigned long long)(ctas - 1)) {
        atomicExch(a.queue, 0ull);
        atomicExch(a.queue + 1, 0ull);
    }
}

// The row of the unit after this one: with the queue, mailbox entry k (the caller's k-th call);
// without, nxt while it is below last. WARP: all 32 lanes of a warp call it, and lane 0 frees
// the entry once every lane has read it; else one thread.
template<bool WARP>
__device__ inline int next_unit(const common_args &a, unit_feed &f, int k, int nxt, int last) {
    if (!a.queue) return nxt < last ? nxt : -1;
    wait(f.full, k & 1);
    const int row = *static_cast<volatile int *>(&f.row);
    if constexpr (WARP) {
        __syncwarp();
        if (laneid() == 0) arrive(f.empty);
    } else {
        arrive(f.empty);
    }
    return row;
}

// A CTA's first unit: the start of [first, last) of a static plan, or its unit of a queued one
// (whose host gives every CTA one; last is not read then). -1: none.
__device__ inline int first_unit(const common_args &a, int first, int last) {
    return a.queue || first < last ? first : -1;
}

}  // namespace attn_tk
