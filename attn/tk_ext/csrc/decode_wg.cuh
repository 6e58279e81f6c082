// The decode warpgroup of the *_dwg.cu units (ATTN_TK_DECODE_WG): a third consumer warpgroup that runs a CTA's
// solo decode items (FLAG_SOLO: kv-split items of at most DEC_ROWS query rows, every tile on
// this one warpgroup) from its own K/V ring while the other two run the CTA's prefix items.
//
// Why: a CTA otherwise runs its prefix items (tensor-bound) and its decode items (memory-bound)
// one after the other, so each SM idles its memory pipe, then its tensor cores (gqa-8b on an
// H200: a 73-us prefix item, then ~43 us of decode pairs; triton's phases on two streams
// overlap them). Overlapped in one CTA, the SM's tensor cores and HBM share the time instead.
// The decode items must then cost little tensor time and few registers (512 threads leave 128
// a thread; the prefix warpgroups keep 184): so they run with the wgmma operands swapped, as
// notes/tk-narrow.patch measured them alone (session 15): S^T = K Q^T (M = the tile's 64
// keys, N = 16 rows) and O^T = V^T P^T (M = 64 columns of D, N = 16 rows), a sixteenth of the
// 64-row form's tensor work at 4 rows, with 8 + 16 accumulator floats a thread.
//
// What it costs: a warp holds 16 keys of every row, so a row's max (each tile) and sum (once
// per item) are reduced over the warpgroup's four warps through shared memory behind a named
// barrier, P^T goes through shared memory (wgmma's B operand), and O^T is transposed through
// shared memory at the item's end, from where all 128 threads store the rows (no 64-float o
// per thread, which 96 registers could not hold). The queries of item i + 1 are gathered
// (cp.async, warp 0) while item i runs, into the other of two query buffers.
// Measured on an H200 (session 21, notes/tk.md): beside it the prefix items run 1.3x slower, so
// the host takes this form only where its decode work outweighs that (ATTN_TK_DECODE_WG=auto:
// gqa-8b, 6-10 % faster).
#pragma once

#include "stacked_layout.cuh"
#include "stacked_debug.cuh"
#include "stacked_sync.cuh"
#include "query_gather.cuh"
#include "tile_ops.cuh"

namespace attn_tk {

using namespace kittens;

constexpr int DEC_BAR = 6;  // the decode warpgroup's named barrier (1, 2 unused; 3, 4: turns; 5: exchange)

__device__ inline void dec_sync() {
    asm volatile("bar.sync %0, %1;\n" :: "n"(DEC_BAR), "n"(128) : "memory");
}

// Generic-proxy writes to shared memory (st.shared, cp.async) that a wgmma reads next.
__device__ inline void dec_proxy_fence() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The decode warpgroup's shared buffer: two query tiles (the B operand of S^T = K Q^T), and P^T
// (the B operand of O^T = V^T P^T), whose bytes the transposition of O^T reuses at an item's end.
template<typename T, int D> struct dec_buf {
    using qs_t = typename dt<T>::template st_t<DEC_ROWS, D>;
    using ps_t = typename dt<T>::template st_t<TILE, DEC_ROWS>;
    static constexpr int XS = 68;  // floats per row of the transposition (68: no bank conflicts)
    static constexpr int QB = (int)sizeof(qs_t), PB = (int)sizeof(ps_t), XB = DEC_ROWS * XS * 4;
    static constexpr int BYTES = (2 * QB + (PB > XB ? PB : XB) + 1023) / 1024 * 1024;
    static_assert(QB % 1024 == 0, "the query tiles stay 1024-aligned");
    alignas(16) char raw[BYTES];
    __device__ inline qs_t &qs(int b) { return *reinterpret_cast<qs_t *>(raw + b * QB); }
    __device__ inline ps_t &ps() { return *reinterpret_cast<ps_t *>(raw + 2 * QB); }
    __device__ inline float *xp() { return reinterpret_cast<float *>(raw + 2 * QB); }
};

// The warpgroup's cross-warp reductions.
struct dec_red {
    float m[4][DEC_ROWS];  // per warp, each tile: its 16 keys' raw max score of each row
    float l[4][DEC_ROWS];  // per warp, at the item's end: its partial sum of each row
    float inv[DEC_ROWS];   // the item's 1 / l of each row (0 without keys), for the stores
};

// This thread's four rows (columns of S^T and O^T): index i is .x / .y (i & 1) of data[0] /
// data[1] (i < 2) or of data[2] / data[3] (i >= 2), row 2 (lane % 4) + (i & 1) + 8 (i >> 1).
__device__ inline int dec_row(int lane, int i) { return 2 * (lane % 4) + (i & 1) + 8 * (i >> 1); }
__device__ inline float &dec_val(float2 (&d)[4], int k, int i) { return (i & 1) ? d[k].y : d[k].x; }

// Warp 0 gathers item i's rows into query buffer b (at most DEC_ROWS: the plan's FLAG_SOLO).
template<typename T, int D, typename QS>
__device__ inline void dec_gather(const common_args &a, int i, QS &qs) {
    const int *it = a.items + (long)i * ITEM_INTS;
    load_q<T, D, QS, DEC_ROWS>(qs, a, it[F_SEQ0], it[F_HEAD], it[F_ROW0], it[F_NROWS]);
}

// Items [first, last) of this CTA's decode list, from position 0 of the decode rings (tile g's K
// in K stage g % KS, phase (g / KS) & 1, its V likewise in V stage g % VS; every tile of an item
// this warpgroup's). K is released once S^T is done, V once O^T is: stream_tiles_split.
// All four warps call it together.
template<typename T, int D, int KS, int VS, typename RING, typename SRC>
__device__ inline void decode_items(const common_args &a, const SRC &src, int first, int last, const RING &ring,
                                    dec_buf<T, D> &nb, dec_red &red) {
    using NB = dec_buf<T, D>;
    using kv_tile = typename tiles<T, D>::kv_tile;
    using half_t = typename dt<T>::template st_t<TILE, 64>;  // 64 columns of a K/V tile
    using acc_t = rt_fl<16, DEC_ROWS>;
    constexpr int HALVES = D / 64;
    static_assert(D % 64 == 0, "the V tile splits into 64-column blocks");
    // A swizzled K/V tile stores its 64-column blocks one after the other (TK's st::idx), each
    // laid out as a tile of 64 columns: block j is the A operand of O^T's columns 64 j ...
    static_assert(sizeof(kv_tile) == HALVES * sizeof(half_t), "64-column blocks of a K/V tile");
    const int lane = threadIdx.x % 32, w = warpid() % 4, tid = threadIdx.x % 128;
    const int key0 = 16 * w + lane / 4;  // this thread's keys: key0 (data[0], [2]), key0 + 8 ([1], [3])
    int g = 0;
    if (w == 0 && first < last) dec_gather<T, D>(a, first, nb.qs(0));
    for (int i = first, b = 0; i < last; i++, b ^= 1) {
        const int *it = a.items + (long)i * ITEM_INTS;
        const int flags = it[F_FLAGS], seq0 = it[F_SEQ0], h = it[F_HEAD], nrows = it[F_NROWS];
        const int row0 = it[F_ROW0], slot = it[F_SLOT], ntiles = src.ntiles(it);
        const bool direct = flags & FLAG_DIRECT, clear_next = flags & FLAG_CLEAR_NEXT;
        typename NB::qs_t &qs = nb.qs(b);
        // Timeline builds: the item's clocks at [i, 0] (a solo item has no second warpgroup).
        timeline(a, i, 0, TL_START);
        long long kwait = 0, vwait = 0;
        (void)kwait;
        (void)vwait;
        if (w == 0) {
            asm volatile("cp.async.wait_all;\n" ::: "memory");  // this item's rows (the next's are not issued yet)
            dec_proxy_fence();
        }
        dec_sync();  // qs holds the item's rows; the previous item's stores have read xp
        if (w == 0 && i + 1 < last) dec_gather<T, D>(a, i + 1, nb.qs(b ^ 1));  // lands during this item
        timeline(a, i, 0, TL_QREADY);
        timeline(a, i, 0, TL_LOOP);

        acc_t st;            // S^T: this warp's keys x 16 rows
        acc_t ot[HALVES];    // O^T: columns 64 j + 16 w .. of D x 16 rows
        #pragma unroll
        for (int j = 0; j < HALVES; j++) warp::zero(ot[j]);
        float mr[4], lr[4];  // running max (log2 units) and this thread's partial sum of its 4 rows
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            mr[k] = -INFINITY;
            lr[k] = 0.f;
        }
        bool any = false;
        for (int t = 0; t < ntiles; t++, g++) {
            // Opaque stage indices: with one stage they are constants, and nvcc then hoists every
            // wgmma descriptor of the stage out of the loop, into registers that spill (at 96).
            const int ks = (int)held_u32(g % KS), kph = (g / KS) & 1, vs = (int)held_u32(g % VS), vph = (g / VS) & 1;
            TL_WAIT(kwait, ring.wait_k(ks, kph));
            const int valid = ring.keys(ks);
            if (valid <= 0) {  // past a chunk's length: nobody reads this V, but it must land before reuse
                ring.release_k(ks);
                ring.wait_v(vs, vph);
                ring.release_v(vs);
                continue;
            }
            any = true;
            wgmma_fence(st);
            if constexpr (ABL_DEC_QK) warpgroup::mma_ABt<acc_t, kv_tile, typename NB::qs_t, 0, 0>(st, ring.k[ks], qs);
            warpgroup::mma_async_wait();
            reg_fence(st);
            ring.release_k(ks);  // the next tile's K loads during this one's softmax and P V
            // V rows past the keys <- 0 (tile_ops.cuh zero_rows_from), ordered before O^T by the
            // fence and barrier after P^T. Here, not after the V wait below: there the branch
            // split the block that computes O^T's descriptors, which then ran after the wait on
            // every tile (gqa-8b 4-6 % slower, session 29).
            if (ATTN_TK_ZERO_PAST && SRC::PAST_TAILS && valid < TILE) {
                ring.wait_v(vs, vph);
                zero_rows_from(ring.v[vs], valid, tid);
            }
            float2 (&d)[4] = st.tiles[0][0].data;
            #pragma unroll
            for (int k = 0; k < 4; k++)
                if (key0 + 8 * (k & 1) >= valid) d[k] = make_float2(-INFINITY, -INFINITY);
            float cm[4];
            #pragma unroll
            for (int k = 0; k < 4; k++) {
                cm[k] = fmaxf(dec_val(d, 2 * (k >> 1), k), dec_val(d, 2 * (k >> 1) + 1, k));
                cm[k] = fmaxf(cm[k], __shfl_xor_sync(0xffffffffu, cm[k], 4));  // the lanes of a row's keys
                cm[k] = fmaxf(cm[k], __shfl_xor_sync(0xffffffffu, cm[k], 8));
                cm[k] = fmaxf(cm[k], __shfl_xor_sync(0xffffffffu, cm[k], 16));
            }
            if (lane < 4) {
                #pragma unroll
                for (int k = 0; k < 4; k++) red.m[w][dec_row(lane, k)] = cm[k];
            }
            dec_sync();
            // Lazy rescaling as in softmax_step_fast (RESCALE_LOG2); every thread of a row reads
            // the same four maxes, so all agree on the row's m without a vote.
            float alpha[4];
            #pragma unroll
            for (int k = 0; k < 4; k++) {
                const int r = dec_row(lane, k);
                const float c = fmaxf(fmaxf(red.m[0][r], red.m[1][r]), fmaxf(red.m[2][r], red.m[3][r])) * a.scale_log2;
                alpha[k] = 1.f;
                if (!(c <= mr[k] + RESCALE_LOG2)) {
                    const float n = fmaxf(mr[k], c);
                    alpha[k] = ex2(mr[k] - n);
                    mr[k] = n;
                }
                lr[k] *= alpha[k];
            }
            typename NB::ps_t &ps = nb.ps();
            #pragma unroll
            for (int k = 0; k < 4; k++) {
                const int i0 = 2 * (k >> 1);
                const float px = ex2(fmaf(d[k].x, a.scale_log2, -mr[i0]));
                const float py = ex2(fmaf(d[k].y, a.scale_log2, -mr[i0 + 1]));
                lr[i0] += px;
                lr[i0 + 1] += py;
                store2<T>(&ps[int2{key0 + 8 * (k & 1), dec_row(lane, i0)}], px, py);
            }
            #pragma unroll
            for (int j = 0; j < HALVES; j++) {
                #pragma unroll
                for (int k = 0; k < 4; k++) {
                    float2 &v = ot[j].tiles[0][0].data[k];
                    v = make_float2(v.x * alpha[2 * (k >> 1)], v.y * alpha[2 * (k >> 1) + 1]);
                }
            }
            dec_proxy_fence();
            dec_sync();  // P^T complete; the four warps' maxes are read (red.m is free)
            TL_WAIT(vwait, ring.wait_v(vs, vph));
            #pragma unroll
            for (int j = 0; j < HALVES; j++) reg_fence(ot[j]);
            asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
            #pragma unroll
            for (int j = 0; j < HALVES; j++) {
                const half_t &vj = reinterpret_cast<const half_t *>(&ring.v[vs])[j];
                if constexpr (ABL_DEC_PV) warpgroup::mma_AtB<acc_t, half_t, typename NB::ps_t, 0, 1>(ot[j], vj, ps);
            }
            warpgroup::mma_async_wait();
            #pragma unroll
            for (int j = 0; j < HALVES; j++) reg_fence(ot[j]);
            ring.release_v(vs);
        }

        timeline(a, i, 0, TL_TAIL);
        // Row sums: over the lanes of a row's keys, then over the four warps.
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            lr[k] += __shfl_xor_sync(0xffffffffu, lr[k], 4);
            lr[k] += __shfl_xor_sync(0xffffffffu, lr[k], 8);
            lr[k] += __shfl_xor_sync(0xffffffffu, lr[k], 16);
        }
        if (lane < 4) {
            #pragma unroll
            for (int k = 0; k < 4; k++) red.l[w][dec_row(lane, k)] = lr[k];
        }
        dec_sync();  // the sums are in; every warp's last wgmma is done, so ps (and xp) are free
        // The item's rows in this slot (or, direct, the output): 1 / l and the natural-log lse,
        // each row by one thread; l >= 1 whenever any (see store_state).
        const int nr = min(DEC_ROWS, nrows - row0);
        if (w == 0 && lane < 4) {
            #pragma unroll
            for (int k = 0; k < 4; k++) {
                const int r = dec_row(lane, k);
                const float lv = red.l[0][r] + red.l[1][r] + red.l[2][r] + red.l[3][r];
                red.inv[r] = any ? __fdividef(1.f, lv) : 0.f;
                if (r < nr) {
                    const int j = row0 + r;
                    const long row = (long)(seq0 + j / a.r) * a.hq + (long)h * a.r + j % a.r;
                    const long grow = direct ? row : (long)slot * a.rows_total + row;
                    (direct ? a.lse : a.part_lse)[grow] = any ? (mr[k] + __log2f(lv)) * 0.69314718055994531f : -INFINITY;
                    if (clear_next) a.part_lse[grow + a.rows_total] = -INFINITY;
                }
            }
        }
        // O^T -> rows, 64 columns of D at a time through xp[row][column] (XS floats a row), then
        // each thread stores 8 consecutive columns of one row.
        timeline(a, i, 0, TL_EPI);
        float *xp = nb.xp();
        constexpr int XS = NB::XS;
        const int sr = tid / 8, sc = (tid % 8) * 8;  // the row and first column this thread stores
        const int sj = row0 + sr;
        const long srow = (long)(seq0 + sj / a.r) * a.hq + (long)h * a.r + sj % a.r;
        const long sgrow = direct ? srow : (long)slot * a.rows_total + srow;
        #pragma unroll
        for (int j = 0; j < HALVES; j++) {
            #pragma unroll
            for (int k = 0; k < 4; k++) {
                const int col = 16 * w + lane / 4 + 8 * (k & 1), r = dec_row(lane, 2 * (k >> 1));
                xp[r * XS + col] = ot[j].tiles[0][0].data[k].x;
                xp[(r + 1) * XS + col] = ot[j].tiles[0][0].data[k].y;
            }
            dec_sync();  // xp (and, for j = 0, red.inv) written
            if (sr < nr) {
                const float inv = red.inv[sr];
                const float *x = xp + sr * XS + sc;
                const int c0 = 64 * j + sc;
                if (direct || a.half_parts) {
                    T *dst = reinterpret_cast<T *>(direct ? a.out : a.part_out) + sgrow * D + c0;
                    #pragma unroll
                    for (int c = 0; c < 8; c += 2) store2<T>(dst + c, x[c] * inv, x[c + 1] * inv);
                } else {
                    float *dst = reinterpret_cast<float *>(a.part_out) + sgrow * D + c0;
                    #pragma unroll
                    for (int c = 0; c < 8; c += 2) store2<float>(dst + c, x[c] * inv, x[c + 1] * inv);
                }
            }
            if (j + 1 < HALVES) dec_sync();  // xp read: the next block may overwrite it
        }
        timeline(a, i, 0, TL_STORED);
        timeline(a, i, 0, TL_KWAIT, kwait);
        timeline(a, i, 0, TL_VWAIT, vwait);
        timeline(a, i, 0, TL_END);
        // (The next item's first dec_sync orders these reads of xp before its writes of ps.)
    }
}

}  // namespace attn_tk
