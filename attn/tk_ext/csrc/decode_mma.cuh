// The decode warpgroup's solo items on mma.sync, each warp on its own keys (ATTN_TK_DEC_MMA=1;
// decode_wg.cuh is the wgmma form it replaces).
//
// Why: the wgmma form's tile is one serial chain across the four warps (S^T wgmma, a cross-warp
// max behind a named barrier, P^T through shared memory and a second barrier, the P V wgmma),
// and each of its two wgmmas queues behind the prefix warpgroups' (H200, session 22: 1.48 us a
// tile where the prefix warpgroups take 1.0-1.25). Here a warp owns a fixed share of every
// tile's keys (16 of 64 for items of up to 8 rows, 32 for up to 16, two warps a row block),
// keeps its own running max and sum over them, and runs S^T = K Q^T and O^T += V^T P^T as
// m16n8k16 mma.sync with the operands in registers: K and V by ldmatrix from the ring's
// swizzled tiles (V transposed by ldmatrix.trans), Q^T once an item, P^T straight from S^T's
// accumulators by movmatrix.trans. No barrier and no shared-memory write inside the tile loop;
// the warps meet once an item, where their states are merged (max, sum, then O^T added into
// xp with shared-memory reductions).
// Registers: O^T is D x 8 floats a warp, D / 4 a thread (32 at D = 128); stacked_layout.cuh
// gives this form 104.
#pragma once

#include "decode_wg.cuh"

namespace attn_tk {

using namespace kittens;

__device__ inline void ldsm4(uint32_t addr, uint32_t (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
__device__ inline void ldsm4_t(uint32_t addr, uint32_t (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
__device__ inline uint32_t movmatrix_t(uint32_t x) {
    uint32_t y;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}
template<typename T> __device__ inline void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template<> __device__ inline void mma16816<bf16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template<> __device__ inline void mma16816<half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template<typename T> __device__ inline uint32_t pack2(float lo, float hi);
template<> __device__ inline uint32_t pack2<bf16>(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}
template<> __device__ inline uint32_t pack2<half>(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

// The shared address of 16-byte chunk (row, 8 c8 ..) of a ROWS-row tile with TK's 128-byte
// swizzle (st::idx: 64-column blocks one after the other, chunk index XOR row % 8; the tile is
// 1024-aligned, as TMA and wgmma need it anyway).
template<int ROWS>
__device__ inline uint32_t sw128(uint32_t base, int row, int c8) {
    return base + (uint32_t)((c8 >> 3) * ROWS * 128 + row * 128 + (((c8 & 7) ^ (row & 7)) << 4));
}

__device__ inline void red_add_shared(uint32_t addr, float v) {
    asm volatile("red.shared.add.f32 [%0], %1;\n" :: "r"(addr), "f"(v) : "memory");
}

// One item on this warp's keys: rows [8 rb, 8 rb + 8) of qs, keys [kw0, kw0 + 16 subs) of every
// tile, 16 at a time (subs 2: two online-softmax steps a tile; a second accumulator set for it
// made ptxas spill 120 bytes at D = 128). Returns mr / lr (log2-unit max and the lane-reduced
// sum of rows 8 rb + 2 (lane % 4) + e) and o (O^T: columns 16 m + lane / 4 (+ 8) of D x those
// rows), unnormalised.
template<typename T, int D, int KS, int VS, typename RING, typename SRC, typename QS>
__device__ inline void dec_mma_loop(const common_args &a, const SRC &src, const int *it, int &g, const RING &ring, const QS &qs,
                                    int rb, int kw0, int subs, float (&o)[D / 16][4], float (&mr)[2], float (&lr)[2],
                                    long long &kwait, long long &vwait) {
    constexpr int KD = D / 16;  // k-steps of S^T, m-tiles of O^T
    const int lane = laneid(), lr8 = lane % 8, lm = lane / 8, gq = lane / 4;
    // Q^T's B fragments are read again every tile (k-steps 2 j, 2 j + 1: qf[0, 1], qf[2, 3]):
    // held for the item, their D / 8 registers made ptxas spill 212 bytes at D = 128.
    const uint32_t qb = static_cast<uint32_t>(__cvta_generic_to_shared(&qs.data[0]));
    #pragma unroll
    for (int m = 0; m < KD; m++) o[m][0] = o[m][1] = o[m][2] = o[m][3] = 0.f;
    mr[0] = mr[1] = -INFINITY;
    lr[0] = lr[1] = 0.f;
    const int ntiles = src.ntiles(it);
    for (int t = 0; t < ntiles; t++, g++) {
        const int ks = (int)held_u32(g % KS), kph = (g / KS) & 1, vs = (int)held_u32(g % VS), vph = (g / VS) & 1;
        TL_WAIT(kwait, ring.wait_k(ks, kph));
        const int valid = ring.keys(ks);
        if (valid <= kw0) {  // none of this warp's keys (past a chunk's length: the V must still land before reuse)
            ring.release_k(ks);
            ring.wait_v(vs, vph);
            ring.release_v(vs);
            continue;
        }
        const uint32_t kb = static_cast<uint32_t>(__cvta_generic_to_shared(&ring.k[ks].data[0]));
        const uint32_t vb = static_cast<uint32_t>(__cvta_generic_to_shared(&ring.v[vs].data[0]));
        #pragma unroll 1
        for (int sub = 0; sub < subs; sub++) {
            const int k0 = kw0 + 16 * sub;  // this step's keys k0 + lane / 4 (+ 8)
            float s[4] = {0.f, 0.f, 0.f, 0.f};
            uint32_t qf[4];  // rows 8 rb + (lane % 8), columns 32 (k / 2) + 8 lm
            #pragma unroll
            for (int k = 0; k < KD; k++) {
                if (k % 2 == 0) ldsm4(sw128<DEC_ROWS>(qb, 8 * rb + lr8, 2 * k + lm), qf);
                uint32_t af[4];  // K rows k0 + (lane % 8) + 8 (lm % 2), columns 16 k + 8 (lm / 2)
                ldsm4(sw128<TILE>(kb, k0 + lr8 + 8 * (lm & 1), 2 * k + (lm >> 1)), af);
                mma16816<T>(s, af, qf[2 * (k % 2)], qf[2 * (k % 2) + 1]);
            }
            if (sub == subs - 1) ring.release_k(ks);  // the mma results are in registers: the ldmatrix reads are done
            if (k0 + gq >= valid) s[0] = s[1] = -INFINITY;
            if (k0 + gq + 8 >= valid) s[2] = s[3] = -INFINITY;
            float cm[2] = {fmaxf(s[0], s[2]), fmaxf(s[1], s[3])}, alpha[2], base[2];
            #pragma unroll
            for (int e = 0; e < 2; e++) {
                cm[e] = fmaxf(cm[e], __shfl_xor_sync(0xffffffffu, cm[e], 4));  // over the lanes of a row's keys
                cm[e] = fmaxf(cm[e], __shfl_xor_sync(0xffffffffu, cm[e], 8));
                cm[e] = fmaxf(cm[e], __shfl_xor_sync(0xffffffffu, cm[e], 16));
                const float c = cm[e] * a.scale_log2;
                alpha[e] = 1.f;
                if (!(c <= mr[e] + RESCALE_LOG2)) {  // lazy rescaling, as softmax_step_fast
                    const float n = fmaxf(mr[e], c);
                    alpha[e] = ex2(mr[e] - n);
                    mr[e] = n;
                }
                lr[e] *= alpha[e];
                base[e] = mr[e] == -INFINITY ? 0.f : mr[e];  // no valid key in the row yet: p = 0
            }
            float p[4];
            #pragma unroll
            for (int c = 0; c < 4; c++) {
                p[c] = ex2(fmaf(s[c], a.scale_log2, -base[c & 1]));
                lr[c & 1] += p[c];
            }
            // P^T as B fragments (keys x rows): S^T's accumulator layout, each 8 x 8 transposed.
            const uint32_t pb0 = movmatrix_t(pack2<T>(p[0], p[1])), pb1 = movmatrix_t(pack2<T>(p[2], p[3]));
            #pragma unroll
            for (int m = 0; m < KD; m++) {
                o[m][0] *= alpha[0];
                o[m][1] *= alpha[1];
                o[m][2] *= alpha[0];
                o[m][3] *= alpha[1];
            }
            if (sub == 0) TL_WAIT(vwait, ring.wait_v(vs, vph));
            #pragma unroll
            for (int m = 0; m < KD; m++) {
                uint32_t af[4];  // V^T: V rows k0 + (lane % 8) + 8 (lm / 2), columns 16 m + 8 (lm % 2)
                ldsm4_t(sw128<TILE>(vb, k0 + lr8 + 8 * (lm >> 1), 2 * m + (lm & 1)), af);
                mma16816<T>(o[m], af, pb0, pb1);
            }
        }
        ring.release_v(vs);
    }
    #pragma unroll
    for (int e = 0; e < 2; e++) {
        lr[e] += __shfl_xor_sync(0xffffffffu, lr[e], 4);
        lr[e] += __shfl_xor_sync(0xffffffffu, lr[e], 8);
        lr[e] += __shfl_xor_sync(0xffffffffu, lr[e], 16);
    }
}

// A warp's O^T values (rows r0, r0 + 1 of its row block, columns 16 m + lane / 4 (+ 8)) times
// f, stored into (ADD: added to) an 8-row x D float buffer, plain row-major: 4-way bank
// conflicts on D / 2 accesses a thread, but one base address and immediate offsets.
template<int D, bool ADD>
__device__ inline void dec_part_out(float *buf, const float (&o)[D / 16][4], const float (&f)[2], int r0, int lane) {
    float *p = buf + r0 * D + lane / 4;
    #pragma unroll
    for (int m = 0; m < D / 16; m++) {
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            float &x = p[(k & 1) * D + 16 * m + 8 * (k >> 1)];
            x = ADD ? x + o[m][k] * f[k & 1] : o[m][k] * f[k & 1];
        }
    }
}

// decode_items' contract (decode_wg.cuh), on mma.sync: items [first, last) of the decode list.
// An item's end merges the warps' states without atomics (shared-memory float atomics are CAS
// loops: H200, the first form of this file spent 3.9 us an item in them): a warp that does not
// store hands its partial to one that does, through xp (free during the loop) or the item's
// query tile (free once every warp's loop is done), and the last warp of each row block stores
// its rows from registers.
template<typename T, int D, int KS, int VS, typename RING, typename SRC>
__device__ inline void decode_items_mma(const common_args &a, const SRC &src, int first, int last, const RING &ring,
                                        dec_buf<T, D> &nb, dec_red &red) {
    using NB = dec_buf<T, D>;
    using kv_tile = typename tiles<T, D>::kv_tile;
    static_assert(kv_tile::swizzle_bytes == 128 && NB::qs_t::swizzle_bytes == 128, "sw128 addresses 128-byte swizzled tiles");
    static_assert(D % 64 == 0 && 8 * D <= DEC_ROWS * NB::XS && 8 * D * 4 <= NB::QB, "a warp's partial fits xp and a query tile");
    constexpr int KD = D / 16;
    const int lane = laneid(), w = warpid() % 4, tid = threadIdx.x % 128, tq = lane % 4;
    int g = 0;
    if (w == 0 && first < last) dec_gather<T, D>(a, first, nb.qs(0));
    for (int i = first, b = 0; i < last; i++, b ^= 1) {
        const int *it = a.items + (long)i * ITEM_INTS;
        // Up to 8 rows: every warp has all rows, 16 keys of a tile. Up to 16: warps 2 rb, 2 rb + 1
        // have rows [8 rb, 8 rb + 8), 32 keys each.
        const bool wide = it[F_NROWS] - it[F_ROW0] > 8;
        const int rb = wide ? w / 2 : 0, kw0 = wide ? 32 * (w % 2) : 16 * w;
        timeline(a, i, 0, TL_START);
        long long kwait = 0, vwait = 0;
        (void)kwait;
        (void)vwait;
        if (w == 0) asm volatile("cp.async.wait_all;\n" ::: "memory");  // this item's rows (the next's are not issued yet)
        dec_sync();  // qs holds the item's rows; the previous item's merge has read xp and its query tile
        if (w == 0 && i + 1 < last) dec_gather<T, D>(a, i + 1, nb.qs(b ^ 1));  // lands during this item
        timeline(a, i, 0, TL_QREADY);
        timeline(a, i, 0, TL_LOOP);
        float o[KD][4], mr[2], lr[2];
        dec_mma_loop<T, D, KS, VS>(a, src, it, g, ring, nb.qs(b), rb, kw0, wide ? 2 : 1, o, mr, lr, kwait, vwait);

        timeline(a, i, 0, TL_TAIL);
        const int r0 = 8 * rb + 2 * tq;  // this thread's rows r0, r0 + 1
        if (lane < 4) {
            red.m[w][r0] = mr[0];
            red.m[w][r0 + 1] = mr[1];
            red.l[w][r0] = lr[0];
            red.l[w][r0 + 1] = lr[1];
        }
        dec_sync();  // the states are in; every warp's loop is done with qs
        // The item's fields are read again here, not held across the loop beside o (spills).
        const int flags = it[F_FLAGS], seq0 = it[F_SEQ0], h = it[F_HEAD], nrows = it[F_NROWS];
        const int row0 = it[F_ROW0], slot = it[F_SLOT];
        const bool direct = flags & FLAG_DIRECT, clear_next = flags & FLAG_CLEAR_NEXT;
        const int nr = min(DEC_ROWS, nrows - row0);
        // Over the row block's warps: M, L, and this warp's factor 2^(m_w - M) / L.
        const int wfirst = wide ? 2 * rb : 0, wn = wide ? 2 : 4;
        float f[2];
        #pragma unroll
        for (int e = 0; e < 2; e++) {
            const int r = r0 + e;
            float mx = -INFINITY;
            for (int u = 0; u < wn; u++) mx = fmaxf(mx, red.m[wfirst + u][r]);
            float l = 0.f;
            if (mx != -INFINITY)
                for (int u = 0; u < wn; u++) l += red.l[wfirst + u][r] * ex2(red.m[wfirst + u][r] - mx);
            f[e] = l > 0.f ? ex2(mr[e] - mx) * __fdividef(1.f, l) : 0.f;
            // One thread a row stores its lse: l >= 1 whenever any key was valid (see store_state).
            if (w == wfirst && lane < 4 && r < nr) {
                const int j = row0 + r;
                const long row = (long)(seq0 + j / a.r) * a.hq + (long)h * a.r + j % a.r;
                const long grow = direct ? row : (long)slot * a.rows_total + row;
                (direct ? a.lse : a.part_lse)[grow] = l > 0.f ? (mx + __log2f(l)) * 0.69314718055994531f : -INFINITY;
                if (clear_next) a.part_lse[grow + a.rows_total] = -INFINITY;
            }
        }
        // O = the sum of the warps' f_w O^T_w, in two turns of plain stores, then adds, into two
        // 8-row buffers: xp and the item's query tile xq (free now). Narrow: warps 0, 1 store
        // into xp, xq and 2, 3 add; O = xp + xq. Wide: warps 0 (rows 0-7), 2 (8-15) store into
        // xp, xq and 1, 3 add.
        timeline(a, i, 0, TL_EPI);
        float *xp = nb.xp(), *xq = reinterpret_cast<float *>(&nb.qs(b));
        float *mine = (wide ? rb : (w & 1)) ? xq : xp;
        const bool second = wide ? (w & 1) : (w >> 1);
        if (!second) dec_part_out<D, false>(mine, o, f, r0 - 8 * rb, lane);
        dec_sync();
        if (second) dec_part_out<D, true>(mine, o, f, r0 - 8 * rb, lane);
        dec_sync();  // O complete
        // Each thread stores 8 consecutive columns of a row, in q's dtype or float.
        constexpr int CPR = D / 8;  // threads a row
        for (int q = tid; q < (wide ? 16 : 8) * CPR; q += 128) {
            const int sr = q / CPR, sc = (q % CPR) * 8;
            if (sr >= nr) continue;
            float x[8];
            if (wide) {
                const float *src = (sr < 8 ? xp : xq) + (sr % 8) * D + sc;
                #pragma unroll
                for (int c = 0; c < 8; c++) x[c] = src[c];
            } else {
                const float *s0 = xp + sr * D + sc, *s1 = xq + sr * D + sc;
                #pragma unroll
                for (int c = 0; c < 8; c++) x[c] = s0[c] + s1[c];
            }
            const int j = row0 + sr;
            const long row = (long)(seq0 + j / a.r) * a.hq + (long)h * a.r + j % a.r;
            const long grow = direct ? row : (long)slot * a.rows_total + row;
            if (direct || a.half_parts) {
                T *dst = reinterpret_cast<T *>(direct ? a.out : a.part_out) + grow * D + sc;
                #pragma unroll
                for (int c = 0; c < 8; c += 2) store2<T>(dst + c, x[c], x[c + 1]);
            } else {
                float *dst = reinterpret_cast<float *>(a.part_out) + grow * D + sc;
                #pragma unroll
                for (int c = 0; c < 8; c += 2) store2<float>(dst + c, x[c], x[c + 1]);
            }
        }
        timeline(a, i, 0, TL_STORED);
        timeline(a, i, 0, TL_KWAIT, kwait);
        timeline(a, i, 0, TL_VWAIT, vwait);
        timeline(a, i, 0, TL_END);
        // (The next item's first dec_sync orders these reads of xp and xq before their reuse.)
    }
}

}  // namespace attn_tk
