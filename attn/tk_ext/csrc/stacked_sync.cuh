// Synchronisation between the stacked kernel's consumer warpgroups: the direct items' state
// exchange, the ping-pong turns of row-split items and the schedule switch; the epilogue's
// paired stores.
#pragma once

#include <cstdlib>
#include <cstring>
#include "stacked_layout.cuh"

namespace attn_tk {

using namespace kittens;

// Direct items (plan.mark_direct: every row of the op is in this one item) write the final
// output instead of a partial state, so the op needs no merge launch. A direct kv-split item's
// rows (at most DIRECT_ROWS: one warp's rows of the MMA layout) have two states, one per
// warpgroup: the warp of warpgroup 1 that holds them (warp 2 of it with ATTN_TK_SPREAD_ROWS,
// else warp 0) hands its registers to warp 0 of warpgroup 0 through this buffer, lane for
// lane (both hold the same rows and columns), and the latter merges.
constexpr int DIRECT_ROWS = 16;
constexpr int XCHG_BAR = 5;  // 3, 4: ping-pong turns (1, 2 unused)
template<int D> struct exchange {
    float2 o[D / 4][32];  // o.tiles[0][c].data[k] of lane l at [c * 4 + k][l]
    float2 m[32], l[32];
};
__device__ inline void exchange_sync() {
    asm volatile("bar.sync %0, %1;\n" :: "n"(XCHG_BAR), "n"(64) : "memory");
}

// A consumer warpgroup's own barrier (7 + wg; 6 is the decode warpgroup's): its threads' zeroed
// V rows (tile_ops.cuh zero_rows_from) are written before any of its warps issues the P V that
// reads them.
constexpr int ZERO_BAR = 7;
__device__ inline void zeroed_sync(int wg) {
    asm volatile("bar.sync %0, %1;\n" :: "r"(ZERO_BAR + wg), "n"(128) : "memory");
}

// The consumers' view of the K / V ring: its tiles and barriers at addresses computed once and
// held in registers. TK's wait / arrive take a semaphore by reference
// and rebuild its shared address from the cluster window (an S2UR of SR_CgaCtaId, then a
// shift and adds) on every call, and each tile's wgmma descriptor re-aligned the dynamic
// shared memory base (about ten dependent integer ops): chains in front of every ring wait
// and every Q K^T of the tile loops (SASS, H200 session 11).
__device__ inline uint32_t held_u32(uint32_t x) {
    asm volatile("" : "+r"(x));  // opaque: computed here, not rematerialised inside the loops
    return x;
}
template<typename P> __device__ inline P *held_ptr(P *p) {
    asm volatile("" : "+l"(p));
    return p;
}
__device__ inline void wait_at(uint32_t bar, int phase) {
    asm volatile(
        "{\n"
        ".reg .pred P1;\n"
        "LAB_WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
        "@P1 bra.uni DONE;\n"
        "bra.uni LAB_WAIT;\n"
        "DONE:\n"
        "}\n" :: "r"(bar), "r"(phase) : "memory");
}
__device__ inline void arrive_at(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0], %1;\n" :: "r"(bar), "r"(count) : "memory");
}
__device__ inline int ld_shared_s32(uint32_t addr) {
    int v;
    asm volatile("ld.shared.s32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
    return v;
}
template<typename KV> struct ring_view {
    KV *k, *v;                        // the stages' tiles
    uint32_t k_full, v_full, done, valid;  // shared addresses of stage 0's barriers and key count
    __device__ inline void wait_k(int s, int ph) const { wait_at(k_full + s * (uint32_t)sizeof(semaphore), ph); }
    __device__ inline void wait_v(int s, int ph) const { wait_at(v_full + s * (uint32_t)sizeof(semaphore), ph); }
    __device__ inline void release(int s) const {  // one arrival per warp
        if (laneid() == 0) arrive_at(done + s * (uint32_t)sizeof(semaphore), 1);
    }
    __device__ inline int keys(int s) const { return ld_shared_s32(valid + s * 4); }
};
template<typename KV>
__device__ inline ring_view<KV> hold_ring(KV *k, KV *v, semaphore *k_full, semaphore *v_full, semaphore *done, int *valid) {
    auto sa = [](const void *p) { return held_u32(static_cast<uint32_t>(__cvta_generic_to_shared(p))); };
    return {held_ptr(k), held_ptr(v), sa(k_full), sa(v_full), sa(done), sa(valid)};
}

// The decode warpgroup's view of its K and V rings (ring_producer.cuh: stream_tiles_split):
// stages released apart, by each of its four warps.
template<typename KV> struct split_ring_view {
    KV *k, *v;
    uint32_t k_full, v_full, k_done, v_done, valid;
    __device__ inline void wait_k(int s, int ph) const { wait_at(k_full + s * (uint32_t)sizeof(semaphore), ph); }
    __device__ inline void wait_v(int s, int ph) const { wait_at(v_full + s * (uint32_t)sizeof(semaphore), ph); }
    __device__ inline void release_k(int s) const {
        if (laneid() == 0) arrive_at(k_done + s * (uint32_t)sizeof(semaphore), 1);
    }
    __device__ inline void release_v(int s) const {
        if (laneid() == 0) arrive_at(v_done + s * (uint32_t)sizeof(semaphore), 1);
    }
    __device__ inline int keys(int s) const { return ld_shared_s32(valid + s * 4); }
};
template<typename KV>
__device__ inline split_ring_view<KV> hold_split_ring(KV *k, KV *v, semaphore *k_full, semaphore *v_full, semaphore *k_done,
                                                      semaphore *v_done, int *valid) {
    auto sa = [](const void *p) { return held_u32(static_cast<uint32_t>(__cvta_generic_to_shared(p))); };
    return {held_ptr(k), held_ptr(v), sa(k_full), sa(v_full), sa(k_done), sa(v_done), sa(valid)};
}

template<typename T> __device__ inline void store2(T *p, float x, float y);
template<> __device__ inline void store2<bf16>(bf16 *p, float x, float y) {
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(x, y);
}
template<> __device__ inline void store2<half>(half *p, float x, float y) {
    *reinterpret_cast<__half2 *>(p) = __floats2half2_rn(x, y);
}

template<> __device__ inline void store2<float>(float *p, float x, float y) {
    *reinterpret_cast<float2 *>(p) = make_float2(x, y);
}

// Columns col, col + 1 and col + 8, col + 9 of row grow (v0, v1 of a 16-column MMA tile),
// times inv: into the final output (direct) or a partial slot (in T or float32).
// (ATTN_TK_FAST_EPILOGUE=0: this per tile, as in H200 run 0029.)
template<typename T, int D>
__device__ inline void store_cols(const common_args &a, bool direct, long grow, int col, float2 v0, float2 v1, float inv) {
    if (direct || a.half_parts) {
        T *dst = reinterpret_cast<T *>(direct ? a.out : a.part_out) + grow * D;
        store2<T>(dst + col, v0.x * inv, v0.y * inv);
        store2<T>(dst + col + 8, v1.x * inv, v1.y * inv);
    } else {
        float *dst = reinterpret_cast<float *>(a.part_out) + grow * D;
        *reinterpret_cast<float2 *>(dst + col) = make_float2(v0.x * inv, v0.y * inv);
        *reinterpret_cast<float2 *>(dst + col + 8) = make_float2(v1.x * inv, v1.y * inv);
    }
}

// One of this thread's two rows of o (rows lane / 4 and lane / 4 + 8 of its warp's 16: HALF),
// times inv, into row grow of base as U (T, or float32 partials): straight-line stores, with
// the destination and its type chosen by the caller once per item.
template<typename U, int D, int HALF, typename O>
__device__ inline void store_row(void *base, long grow, const O &o, float inv) {
    U *dst = reinterpret_cast<U *>(base) + grow * D + 2 * (threadIdx.x % 4);
    #pragma unroll
    for (int c = 0; c < D / 16; c++) {
        const float2 v0 = o.tiles[0][c].data[HALF], v1 = o.tiles[0][c].data[HALF + 2];
        store2<U>(dst + c * 16, v0.x * inv, v0.y * inv);
        store2<U>(dst + c * 16 + 8, v1.x * inv, v1.y * inv);
    }
}

// Consumer schedule of row-split items, chosen per launch (no rebuild to compare or fall back).
enum Sched {
    SCHED_SERIAL = 0,    // QK^T, wait, softmax, PV, wait
    SCHED_PIPELINE = 1,  // FA3 intra-warpgroup pipeline
    SCHED_PINGPONG = 2,  // pipeline + the two warpgroups take turns issuing their wgmmas
};

// ATTN_TK_SCHED=serial|pipeline|pingpong (default pingpong), read at every launch (host).
inline int sched_mode() {
#if ATTN_TK_PIPELINE
    const char *e = std::getenv("ATTN_TK_SCHED");
    if (e && !std::strcmp(e, "serial")) return SCHED_SERIAL;
    if (e && !std::strcmp(e, "pipeline")) return SCHED_PIPELINE;
    return SCHED_PINGPONG;
#else
    return SCHED_SERIAL;
#endif
}

// Ping-pong (FA3): warpgroup w issues a tile's wgmmas only after the other one issued its
// previous ones, so one warpgroup's softmax runs while the other's GEMMs hold the tensor cores.
// Barrier SCHED_BAR + w is "w's turn": w syncs on it (128 threads), the other warpgroup
// arrives (128 more). Both warpgroups take the same branches on every row-split tile (same
// item, same valid counts), so turns strictly alternate for the life of the CTA; warpgroup 1
// grants the first turn. A grant left over at exit is harmless (barriers reset per CTA).
constexpr int SCHED_BAR = 3;
static_assert(NWG == 2, "ping-pong pairs two consumer warpgroups");
__device__ inline void turn_wait(int wg) {
    asm volatile("bar.sync %0, %1;\n" :: "r"(SCHED_BAR + wg), "n"(256) : "memory");
}
__device__ inline void turn_pass(int wg) {
    asm volatile("bar.arrive %0, %1;\n" :: "r"(SCHED_BAR + (wg ^ 1)), "n"(256) : "memory");
}

}  // namespace attn_tk
