// The stacked kernel's epilogue: an item's warp stores its rows' normalised out and
// natural-log lse, as a partial state (into its slot, in T or float32) or, for a direct item,
// the final result (in T).
#pragma once

#include "stacked_layout.cuh"
#include "stacked_debug.cuh"
#include "stacked_sync.cuh"

namespace attn_tk {

using namespace kittens;

// The item fields and facts of the tile loop that the epilogue reads.
struct item_state {
    int seq0, h, nrows, row0, slot, wq;  // wq: which 16 of the item's rows this warp holds
    bool kvsplit, direct, clear_next, any;
};

template<typename T, int D, typename O, typename V>
__device__ __forceinline__ void store_state(const common_args &a, const item_state &it, O &o, V &m, V &l) {
    const int seq0 = it.seq0, h = it.h, nrows = it.nrows, row0 = it.row0, slot = it.slot, wq = it.wq;
    const bool kvsplit = it.kvsplit, direct = it.direct, clear_next = it.clear_next, any = it.any;
    const int lane = threadIdx.x % 32;
    const int wrow = wq * 16 + lane / 4;
#if ATTN_TK_FAST_EPILOGUE
    const bool half_out = direct || a.half_parts;
    void *const out_base = direct ? a.out : a.part_out;
    float *const lse_base = direct ? a.lse : a.part_lse;
#endif
    #pragma unroll
    for (int half_ = 0; half_ < 2; half_++) {
        int j = row0 + wrow + half_ * 8;
        if (j >= nrows || j - row0 >= TILE) continue;
        if (!ABL_ROW_STORES && !kvsplit) continue;
        long b = seq0 + j / a.r, hh = (long)h * a.r + j % a.r;
        long row = b * a.hq + hh;
        long grow = direct ? row : (long)slot * a.rows_total + row;
        float mv = half_ ? m[0][0].y : m[0][0].x;
        float lv = half_ ? l[0][0].y : l[0][0].x;
#if ATTN_TK_FAST_EPILOGUE
        // l >= 1 whenever any (m is a max of scores seen, so the row's largest key adds
        // 2^(s - m) >= 1): MUFU's reciprocal and log2 are within 2 ulp and 2^-22 there.
        const float inv = any ? __fdividef(1.f, lv) : 0.f;
        if (half_out) {
            if (half_) store_row<T, D, 1>(out_base, grow, o, inv);
            else store_row<T, D, 0>(out_base, grow, o, inv);
        } else {
            if (half_) store_row<float, D, 1>(out_base, grow, o, inv);
            else store_row<float, D, 0>(out_base, grow, o, inv);
        }
        if (lane % 4 == 0) {
            lse_base[grow] = any ? (mv + __log2f(lv)) * 0.69314718055994531f : -INFINITY;
            if (clear_next) a.part_lse[grow + a.rows_total] = -INFINITY;
        }
#else
        float inv = any ? 1.f / lv : 0.f;
        #pragma unroll
        for (int c = 0; c < D / 16; c++)
            store_cols<T, D>(a, direct, grow, c * 16 + 2 * (lane % 4), o.tiles[0][c].data[half_ ? 1 : 0],
                             o.tiles[0][c].data[half_ ? 3 : 2], inv);
        if (lane % 4 == 0) {
            float lse = any ? (mv + log2f(lv)) * 0.69314718055994531f : -INFINITY;
            if (direct) a.lse[grow] = lse;
            else a.part_lse[grow] = lse;
            if (clear_next) a.part_lse[grow + a.rows_total] = -INFINITY;
        }
#endif
    }
    (void)kvsplit;
}

}  // namespace attn_tk
