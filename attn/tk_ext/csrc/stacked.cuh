// Stacked-query attention over a list of K/V tiles: the one kernel body behind every
// attention phase of the tk backend.
//
// A work item is "a block of stacked query rows against a range of K/V tiles":
//  - shared-prefix phase: the rows of every sequence of a level's group times the GQA group's
//    query heads, against a slice (split-K) of the level's prefix tiles;
//  - suffix phase: one sequence's query heads against a slice of its own suffix;
//  - chunk-first phase: the rows of sequences [begin, end) against a run of shared chunks;
//  - sequence-first phase: one sequence's query heads against its private chunks.
// Every item writes normalised partial states (out in T or float32, natural-log lse in
// float32) into a slot of a partial buffer; merge.cu combines the slots of each row.
//
// CTA layout: NWG consumer warpgroups (64 query rows each, wgmma) + 1 producer warpgroup
// whose first warp streams K/V tiles with TMA through a STAGES-deep ring of shared tiles
// (ring_producer.cuh) and whose second warp gathers the items' query rows ahead into a ring
// of query tiles (query_gather.cuh).
// Items with more than 64 rows split the rows between the consumer warpgroups ("row split",
// both consume every tile); items with at most 64 rows (decode) split the tiles instead
// ("kv split": warpgroup w takes tiles w, w+NWG, ... and writes slot + w), so that decode
// keeps both warpgroups busy; two kv-split items can also run as a pair (FLAG_PAIR: the
// first on warpgroup 0, the next on warpgroup 1, each over all of its tiles, which the
// producer interleaves in the ring), so that their fixed costs overlap. Row-split items are
// compute-bound and run FlashAttention-3's consumer schedule (Sched: QK^T of the next tile and PV of the previous one in flight during
// the softmax, the two warpgroups taking turns on the tensor cores); kv-split items run the
// plain serial loop.
// The grid is persistent (one CTA per SM): the host balances items over CTAs (plan.schedule)
// and each CTA runs its items back to back with one continuous K/V ring, so no CTA launch,
// prologue or epilogue ever leaves the memory pipe idle.
#pragma once

#include "stacked_layout.cuh"
#include "stacked_debug.cuh"
#include "stacked_sync.cuh"
#include "query_gather.cuh"
#include "ring_producer.cuh"
#include "stacked_epilogue.cuh"
#include "decode_wg.cuh"

namespace attn_tk {

using namespace kittens;

// The kernel. SRC provides, for an item: ntiles(item) (tiles to process, after dynamic lengths),
// valid(item, t) (valid keys of tile t, <= 0 to skip it), and load(item, t, k, v, kbar, vbar);
// PAST_TAILS / ROW_SPLIT_TAILS: whether a tile (of a row-split item) can end inside the tensor.
template<typename T, int D, typename SRC>
__global__ void ATTN_TK_KERNEL_BOUNDS
stacked_attn_kernel(const __grid_constant__ common_args a, const __grid_constant__ SRC src) {
    using TL = tiles<T, D>;
    using q_tile = typename TL::q_tile;
    using kv_tile = typename TL::kv_tile;
    constexpr int STAGES = TL::STAGES;

    extern __shared__ int __shm[];
    tma_swizzle_allocator al((int *)&__shm[0]);
    q_tile(&q_smem)[QSLOTS] = al.allocate<q_tile, QSLOTS>();
    kv_tile(&k_smem)[STAGES] = al.allocate<kv_tile, STAGES>();
    kv_tile(&v_smem)[STAGES] = al.allocate<kv_tile, STAGES>();
    __shared__ semaphore k_full[STAGES], v_full[STAGES], done[STAGES], q_full[QSLOTS], q_empty[QSLOTS];
#if ATTN_TK_DECODE_WG
    // The decode warpgroup's ring and buffer (decode_wg.cuh).
    constexpr int DKS = TL::DEC_KSTAGES, DVS = TL::DEC_VSTAGES;
    static_assert(sizeof(dec_buf<T, D>) == TL::DEC_BUF, "tiles<T, D>::DEC_BUF is the decode buffer's size");
    kv_tile *kd_smem = &al.allocate<kv_tile, DKS>()[0];
    kv_tile *vd_smem = &al.allocate<kv_tile, DVS>()[0];
    dec_buf<T, D> *dbuf = &al.allocate<dec_buf<T, D>, 1>()[0];
    __shared__ semaphore kd_full[DKS], vd_full[DVS], kd_done[DKS], vd_done[DVS];
    __shared__ int d_valid[DKS];
    __shared__ dec_red dred;
#endif
    // ATTN_TK_Q_FIRST: completed once, by the query warp, when the first unit's queries have
    // landed. The producer cannot wait on q_full for that: a slot's consumers free it as soon as
    // they hold its rows, so the query warp can refill it (q_full's next phase, the same parity)
    // while the producer is still in its first tiles' metadata reads, and its wait on parity 0
    // then never returns (a bench run of the =2 build hung, session 17).
    __shared__ semaphore q_first;
    __shared__ unit_feed feed;  // the unit queue's mailbox (unit_queue.cuh; unused without one)
    __shared__ exchange<D> xchg;
    // Valid keys of the tile in each ring stage, written by the producer before it arms the
    // stage's k_full (an arrive: release) and read by the consumers after their wait on it
    // (acquire), before they release the stage. The consumers would otherwise chase the item's
    // fields and the source's lengths (chunk ids, suffix lengths) through global memory on
    // every tile, on the critical path of each iteration.
    // (ATTN_TK_STAGE_VALID=0: the consumers read them from global memory, as in H200 run 0008.)
    __shared__ int stage_valid[STAGES];

    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            init_semaphore(k_full[s], 0, 1);
            init_semaphore(v_full[s], 0, 1);
            // Every consumer warp releases a stage (not one per warpgroup): a warp that lags
            // its warpgroup's lane 0 past a stage's reuse would otherwise wait on the stage's
            // parity two phases on, i.e. forever. Warps of a warpgroup meet only at its
            // collective wgmmas, and a kv-split warpgroup whose tiles are all past partial
            // chunks issues none; a 2-stage ring (notes/tk-keys128.patch) hung this way.
            init_semaphore(done[s], NWG * 4, 0);
        }
        for (int b = 0; b < QSLOTS; b++) {
            init_semaphore(q_full[b], ATTN_TK_QASYNC ? 32 : 1, 0);  // every lane / lane 0
            // Every consumer warp frees a slot once it holds its rows (count 1 each of 8 for a
            // kv-split item's slot, 2 each of 4 for a row-split warpgroup's), so no warp waits
            // at an item's start for its warpgroup's slowest, e.g. the one warp of a
            // few-row decode item that stores rows in the epilogue.
            init_semaphore(q_empty[b], NWG * 4, 0);
        }
        if (ATTN_TK_Q_FIRST) init_semaphore(q_first, 1, 0);
        if (a.queue) init_feed(feed);
#if ATTN_TK_DECODE_WG
        for (int s = 0; s < DKS; s++) {
            init_semaphore(kd_full[s], 0, 1);
            init_semaphore(kd_done[s], 4, 0);  // the decode warpgroup's four warps
        }
        for (int s = 0; s < DVS; s++) {
            init_semaphore(vd_full[s], 0, 1);
            init_semaphore(vd_done[s], 4, 0);
        }
#endif
    }
    {
        // load_q writes only the valid rows of an item: the others must hold finite values.
        constexpr int N16 = (int)(sizeof(q_tile) * QSLOTS / 16);
        int4 *z = reinterpret_cast<int4 *>(&q_smem[0]);
        for (int k = threadIdx.x; k < N16; k += NTHREADS) z[k] = make_int4(0, 0, 0, 0);
#if ATTN_TK_DECODE_WG
        int4 *zd = reinterpret_cast<int4 *>(dbuf->raw);  // the decode query tiles: the same
        for (int k = threadIdx.x; k < (int)sizeof(dbuf->raw) / 16; k += NTHREADS) zd[k] = make_int4(0, 0, 0, 0);
#endif
    }
    __syncthreads();

    // Persistent: this CTA runs items [first, last) of the (host-balanced) table, or its first
    // unit and then those it takes from the unit queue (unit_queue.cuh), and the tile ring runs on
    // across items, so the producer streams the next item's K/V while the consumers finish the
    // current one.
#if ATTN_TK_DECODE_WG
    // Two lists a CTA: the prefix warpgroups' [first, last) and the decode warpgroup's
    // [last, dlast) (cta_items[2 c .. 2 c + 2]; no heads: the host passes none). Read after each
    // role's register change, so that no value lives across one (ptxas spills those).
    const int *head = nullptr;
    auto list_end = [&](int k) { return a.cta_items[2 * (int)blockIdx.x + k]; };  // k = 0: first, 1: last, 2: dlast
    const int wg = threadIdx.x / 128;
    if (wg == NWG + 1) {
        warpgroup::decrease_registers<PRODUCER_REGS>();
        const int first = list_end(0), last = list_end(1);
        if (warpid() % 4 == 1) gather_queries<T, D>(a, first, last, head, &feed, q_smem, q_full, q_empty, &q_first);
        if (threadIdx.x % 128 == 0) stream_tiles<STAGES>(a, src, first, last, head, &feed, k_smem, v_smem, k_full, v_full, done, stage_valid, &q_first);
        if (threadIdx.x % 128 == 64)  // warp 2: the decode ring
            stream_tiles_split<DKS, DVS>(a, src, last, list_end(2), kd_smem, vd_smem, kd_full, vd_full, kd_done, vd_done, d_valid);
        return;
    }
    if (wg == NWG) {
        warpgroup::decrease_registers<DECODE_REGS>();
        const auto dring = hold_split_ring(kd_smem, vd_smem, &kd_full[0], &vd_full[0], &kd_done[0], &vd_done[0], &d_valid[0]);
        decode_items<T, D, DKS, DVS>(a, src, list_end(1), list_end(2), dring, *dbuf, dred);
        return;
    }
    warpgroup::increase_registers<CONSUMER_REGS>();
    const int first = list_end(0), last = list_end(1);
#else
    const int *head = cta_head(a);
    const int first = head ? a.heads.range[blockIdx.x][0] : a.cta_items[blockIdx.x];
    const int last = head ? a.heads.range[blockIdx.x][1] : a.cta_items[blockIdx.x + 1];
    const int wg = threadIdx.x / 128;
    if (wg == NWG) {
        warpgroup::decrease_registers<PRODUCER_REGS>();
        if (warpid() % 4 == 1) gather_queries<T, D>(a, first, last, head, &feed, q_smem, q_full, q_empty, &q_first);
        if (threadIdx.x % 128 == 0) stream_tiles<STAGES>(a, src, first, last, head, &feed, k_smem, v_smem, k_full, v_full, done, stage_valid, &q_first);
        if (a.queue && threadIdx.x % 128 == 64) fetch_units(a, feed);  // warp 2: the unit queue's fetcher
        return;
    }
    warpgroup::increase_registers<CONSUMER_REGS>();
#endif
    const auto ring = hold_ring(&k_smem[0], &v_smem[0], &k_full[0], &v_full[0], &done[0], &stage_valid[0]);

    const int lane = threadIdx.x % 32;
    const bool pingpong = a.sched == SCHED_PINGPONG;
    if (pingpong && wg == 1) turn_pass(wg);
    int g = 0;  // tiles consumed so far by this CTA: ring stage g % STAGES, phase (g / STAGES) & 1
    int qs = 0;  // query slots used so far (as the query warp counts them)
    int k = 0;   // units after the first (the unit queue's mailbox entries read)
    for (int i = first_unit(a, first, last); i >= 0; i = next_unit<true>(a, feed, k++, i + 1, last)) {
        const int *it = item_at(a, head, i, first);
        // A pair (items i, i + 1) is one turn of this loop: this warpgroup runs item mi.
        const bool pair = it[F_FLAGS] & FLAG_PAIR;
        const int mi = i + (pair ? wg : 0);
        const int ntiles = pair ? 2 * max(src.ntiles(it), src.ntiles(it + ITEM_INTS)) : src.ntiles(it);
        it += pair ? wg * ITEM_INTS : 0;
        i += pair;
        // The fields the epilogue needs are read here, once: a read of it[] after the ring's
        // waits (asm with memory clobbers) is a new global load, on the epilogue's critical path.
        const int flags = it[F_FLAGS];
        const bool kvsplit = flags & FLAG_KV_SPLIT, direct = flags & FLAG_DIRECT;
        const bool clear_next = flags & FLAG_CLEAR_NEXT;
        const bool shared_q = kvsplit && !pair;  // both warpgroups read one query slot, write two slots
        const int seq0 = it[F_SEQ0], h = it[F_HEAD], nrows = it[F_NROWS];
        const int row0 = it[F_ROW0] + (kvsplit ? 0 : wg * TILE);
        const int slot = it[F_SLOT] + (shared_q ? wg : 0);
        const int qu = qs + (shared_q ? 0 : wg), qb = qu % QSLOTS;
        qs += shared_q ? 1 : NWG;
        q_tile &qt = q_smem[qb];
        // Which 16 of the item's rows this warp holds (the MMA's rows 16 wq ..): its own index,
        // but warpgroup 1 of a kv-split item turns its warps by two (ATTN_TK_SPREAD_ROWS), so
        // that the one or two warps that hold a decode item's rows sit on different SM
        // sub-partitions in the two warpgroups (warp w runs on sub-partition w % 4). In the
        // serial loop (kv-split items) a warp whose rows are all past the item skips the
        // softmax (its P stays 0).
        const int wq = (warpid() % 4 + (ATTN_TK_SPREAD_ROWS && kvsplit && wg == 1 ? 2 : 0)) % 4;
        const bool live = !ATTN_TK_SPREAD_ROWS || row0 + wq * 16 < nrows;
        trace(a, TR_QFULL, mi, qu, qb);
        timeline(a, mi, wg, TL_START);
        if (ATTN_TK_SELF_Q && i - pair == first && !shared_q) {  // self-gathered (stacked_layout.cuh): this warp copies its own rows
            load_q<T, D, q_tile, 16>(qt, a, seq0, h, row0, nrows, wq * 16);
            asm volatile("cp.async.wait_all;\n" ::: "memory");
            __syncwarp();
            if (laneid() < 8) arrive(q_full[qb]);
        } else {
            wait(q_full[qb], (qu / QSLOTS) & 1);
        }
        timeline(a, mi, wg, TL_QREADY);
        long long kwait = 0, vwait = 0;  // timeline builds: cycles in ring waits
        (void)kwait;
        (void)vwait;
        // Q from registers (wgmma RS) in every schedule, so the query slot is free for a later
        // item's gather as soon as every warp holds its rows. With 64-key tiles a
        // shared-memory Q would also make Q K^T read A and B from shared memory for 64 x 64 x
        // 16 per instruction: all of the SM's shared-memory bandwidth, with TMA writing too.
        typename dt<T>::template rt_t<16, D> q_reg;
        if constexpr (ATTN_TK_SPREAD_ROWS) warp::load(q_reg, qt.template subtile<16, D>({wq, 0}));
        else warpgroup::load(q_reg, qt);  // this warp's 16 rows
        __syncwarp();
        if (laneid() == 0) arrive(q_empty[qb], shared_q ? 1 : NWG);
        timeline(a, mi, wg, TL_LOOP);

        rt_fl<16, TILE> att;
        typename dt<T>::template rt_t<16, TILE> att_lp;
        rt_fl<16, D> o;
        col_vec<rt_fl<16, TILE>> m, alpha, l;
        warp::neg_infty(m);
        warp::zero(l);
        warp::zero(o);
        if (!live) warp::zero(att_lp);
        bool any = false;
        // V rows past a partial tile's keys <- 0 (both warpgroups of a row-split item write the
        // same zeros), then this warpgroup meets, before its P V.
        auto zero_past = [&](int s, int valid) {
            zero_rows_from(ring.v[s], valid, threadIdx.x % 128);
            zeroed_sync(wg);
        };

#if ATTN_TK_PIPELINE
        if (!kvsplit && a.sched != SCHED_SERIAL) {
            // FlashAttention-3 intra-warpgroup pipeline: S_t = Q K_t^T and O += P_{t-1} V_{t-1}
            // are issued back to back as two wgmma groups; the softmax of S_t runs while the
            // tensor cores still do P_{t-1} V_{t-1}. Stage of tile t-1 ("pending": its P is
            // in att_lp, its V not yet consumed) is released only after that PV completed.
            // Invariant: a pending tile is always the previous tile (a skipped tile flushes),
            // so this warpgroup holds at most two ring stages and the producer, which needs
            // tile t - STAGES released before it loads tile t, never waits on us.
            using att_t = decltype(att);
            using o_t = decltype(o);
            using p_t = decltype(att_lp);
            using qr_t = decltype(q_reg);
            // S = Q K^T and O += P V, each one committed wgmma group.
            auto qk_async = [](att_t &sc, const qr_t &qr, const kv_tile &k) {
                wgmma_fence(sc);
                if constexpr (ABL_QK) warpgroup::mma_ABt<att_t, qr_t, kv_tile, 0, 0>(sc, qr, k);
            };
            auto pv_async = [](o_t &acc, const p_t &p, const kv_tile &v) {
                wgmma_fence(acc);
                if constexpr (ABL_PV) warpgroup::mma_AB<o_t, p_t, kv_tile, 0, 1>(acc, p, v);
            };
            bool pend = false;
            int ps = 0, pph = 0;  // stage and phase of the pending tile
            auto flush = [&]() {
                trace(a, TR_VFULL, mi, g - 1, ps);
                TL_WAIT(vwait, ring.wait_v(ps, pph));
                pv_async(o, att_lp, ring.v[ps]);
                warpgroup::mma_async_wait<0>();
                reg_fence(o);
                ring.release(ps);
                pend = false;
            };
            for (int t = 0; t < ntiles; t++, g++) {
                const int s = g % STAGES, ph = (g / STAGES) & 1;
                trace(a, TR_KFULL, mi, g, s);
                TL_WAIT(kwait, ring.wait_k(s, ph));
                const int valid = ATTN_TK_STAGE_VALID ? ring.keys(s) : src.valid(it, t);
                if (valid <= 0) {
                    if (pend) flush();
                    ring.wait_v(s, ph);  // nobody reads this V: its load must land before reuse
                    ring.release(s);
                    continue;
                }
                any = true;
                // Zeroed here, at the tile's start, not before its P V: a branch in the issue
                // block of the loop above cost every tile (the decode warpgroup's did, session 29).
                if (ATTN_TK_ZERO_PAST && SRC::ROW_SPLIT_TAILS && valid < TILE) {
                    ring.wait_v(s, ph);  // (its wait before P V then returns at once)
                    zero_past(s, valid);
                }
                bool rescale;
                // Each branch retires every wgmma it issued: ptxas tracks in-flight wgmma
                // registers path-insensitively, and a group still pending at a join makes it
                // insert waits and serialize every wgmma of the kernel (C7518).
                if (pend) {
                    trace(a, TR_VFULL, mi, g - 1, ps);
                    TL_WAIT(vwait, ring.wait_v(ps, pph));  // before taking the turn: hold it only to issue
                    trace(a, TR_TURN, mi, g, wg);
                    if (pingpong) turn_wait(wg);
                    qk_async(att, q_reg, ring.k[s]);
                    pv_async(o, att_lp, ring.v[ps]);
                    if (pingpong) turn_pass(wg);
                    warpgroup::mma_async_wait<1>();  // S_t done; P_{t-1} V_{t-1} may still run
                    reg_fence(att);
                    rescale = ABL_SM ? softmax_step_fast(att, m, l, alpha, valid, a.scale_log2) : false;
                    // Keep the softmax above the wait. ptxas schedules the wait (no register
                    // inputs) at the top of its basic block, before the softmax, so nothing
                    // would overlap P V; the fences keep the compiler from sinking it, and a
                    // branch on the row sums (never taken: l >= 0, and NaN compares false)
                    // ends the block only once every exp2 of the tile is done.
                    reg_fence(att);
                    vec_fence(m);
                    vec_fence(l);
                    vec_fence(alpha);
                    if (l[0][0].x < 0.f || l[0][0].y < 0.f) __trap();
                    warpgroup::mma_async_wait<0>();  // o and att_lp are free again
                    reg_fence(o);
                    ring.release(ps);
                } else {
                    trace(a, TR_TURN, mi, g, wg);
                    if (pingpong) turn_wait(wg);
                    qk_async(att, q_reg, ring.k[s]);
                    if (pingpong) turn_pass(wg);
                    warpgroup::mma_async_wait<0>();
                    reg_fence(att);
                    rescale = ABL_SM ? softmax_step_fast(att, m, l, alpha, valid, a.scale_log2) : false;
                }
                if (rescale) warp::mul_row(o, o, alpha);
                warp::copy(att_lp, att);
                pend = true;
                ps = s;
                pph = ph;
            }
            if (pend) flush();
            row_lanes_sum(l);
        } else
#endif
        {
        for (int t = 0; t < ntiles; t++, g++) {
            int s = g % STAGES, ph = (g / STAGES) & 1;
            // Both warpgroups wait for every tile, even one they skip, so that their arrivals
            // on done[s] can never run a phase ahead of the producer.
            trace(a, TR_KFULL, mi, g, s);
            TL_WAIT(kwait, ring.wait_k(s, ph));
            int valid = ATTN_TK_STAGE_VALID || pair ? ring.keys(s) : src.valid(it, t);
            int walk_seq = 0;  // a walked suffix tile: 1 + its sequence in the item (SRC::WALKS)
            if constexpr (SRC::WALKS) {
                if (valid >= WALK_TAG) {
                    walk_seq = (valid - WALK_TAG) >> 16;
                    valid &= 0xffff;
                }
            }
            bool mine = (!kvsplit || (t % NWG) == wg) && valid > 0;
            // A tile nobody computes on (past a partial chunk) is released only once its V
            // has landed: the producer's next expect_bytes on v_full[s] must start a new phase.
            if (valid <= 0) ring.wait_v(s, ph);
            if (ATTN_TK_ZERO_PAST && SRC::PAST_TAILS && mine && valid < TILE) {  // as in the pipelined loop: before the tile's Q K^T
                ring.wait_v(s, ph);
                zero_past(s, valid);
            }
            if (mine) {
                any = true;
                // wgmma.fence only, as in the pipelined loop: TK's fence adds a fence.proxy.async
                // that is not needed here (run 0026 / 0027: no measurable difference either way).
                wgmma_fence(att);
                if constexpr (ABL_QK) warpgroup::mma_ABt<decltype(att), decltype(q_reg), kv_tile, 0, 0>(att, q_reg, ring.k[s]);
                warpgroup::mma_async_wait();
                reg_fence(att);
                if (live) {
                    if constexpr (SRC::WALKS) {
                        if (walk_seq) mask_rows(att, row0 + wq * 16, (walk_seq - 1) * a.r, walk_seq * a.r);
                    }
#if ATTN_TK_SERIAL_SOFTMAX
                    if (ABL_SM && softmax_step_fast(att, m, l, alpha, valid, a.scale_log2)) warp::mul_row(o, o, alpha);
#else
                    softmax_step(att, m, l, alpha, valid, a.scale_log2);
                    warp::mul_row(o, o, alpha);
#endif
                    warp::copy(att_lp, att);
                }
                trace(a, TR_VFULL, mi, g, s);
                TL_WAIT(vwait, ring.wait_v(s, ph));
                wgmma_fence(o);
                if constexpr (ABL_PV) warpgroup::mma_AB<decltype(o), decltype(att_lp), kv_tile, 0, 1>(o, att_lp, ring.v[s]);
                warpgroup::mma_async_wait();
                reg_fence(o);
            }
            ring.release(s);
        }
#if ATTN_TK_SERIAL_SOFTMAX
        row_lanes_sum(l);  // softmax_step_fast keeps per-lane partial row sums
#endif
        }
        timeline(a, mi, wg, TL_TAIL);
        if (direct && shared_q) {
            // Rows >= DIRECT_ROWS are not in the item (plan.mark_direct): only the warp with
            // rows 0-15 (wq = 0) of each warpgroup works.
            if (wq * 16 >= DIRECT_ROWS) continue;
            if (wg == 1) {
                #pragma unroll
                for (int c = 0; c < D / 16; c++) {
                    #pragma unroll
                    for (int k = 0; k < 4; k++) xchg.o[c * 4 + k][lane] = o.tiles[0][c].data[k];
                }
                xchg.m[lane] = make_float2(any ? m[0][0].x : -INFINITY, any ? m[0][0].y : -INFINITY);
                xchg.l[lane] = l[0][0];
            }
            trace(a, TR_XCHG, mi, g, wg);
            exchange_sync();  // warpgroup 1's state is in xchg
            if (wg == 1) {
                exchange_sync();  // read: xchg is free for the next item
                timeline(a, mi, wg, TL_KWAIT, kwait);
                timeline(a, mi, wg, TL_VWAIT, vwait);
                timeline(a, mi, wg, TL_END);
                continue;
            }
            const float2 m1 = xchg.m[lane], l1 = xchg.l[lane];
            const float2 m0 = make_float2(any ? m[0][0].x : -INFINITY, any ? m[0][0].y : -INFINITY);
            // Base-2 states (m, l, unnormalised o): rescale both to the larger max. A side
            // with no keys has m = -inf and weight 0; both empty leaves any = false.
            const float mx = fmaxf(m0.x, m1.x), my = fmaxf(m0.y, m1.y);
            const float a0x = m0.x == -INFINITY ? 0.f : ex2(m0.x - mx), a1x = m1.x == -INFINITY ? 0.f : ex2(m1.x - mx);
            const float a0y = m0.y == -INFINITY ? 0.f : ex2(m0.y - my), a1y = m1.y == -INFINITY ? 0.f : ex2(m1.y - my);
            #pragma unroll
            for (int c = 0; c < D / 16; c++) {
                #pragma unroll
                for (int k = 0; k < 4; k++) {
                    float2 &v = o.tiles[0][c].data[k];
                    const float2 w = xchg.o[c * 4 + k][lane];
                    const float a0 = (k & 1) ? a0y : a0x, a1 = (k & 1) ? a1y : a1x;
                    v = make_float2(v.x * a0 + w.x * a1, v.y * a0 + w.y * a1);
                }
            }
            exchange_sync();  // xchg read
            l[0][0] = make_float2(l[0][0].x * a0x + l1.x * a1x, l[0][0].y * a0y + l1.y * a1y);
            m[0][0] = make_float2(mx, my);
            any = any || m1.x != -INFINITY || m1.y != -INFINITY;
        }

        // Epilogue: normalised out and natural-log lse of this warpgroup's rows (stacked_epilogue.cuh).
        timeline(a, mi, wg, TL_EPI);
        store_state<T, D>(a, {seq0, h, nrows, row0, slot, wq, kvsplit, direct, clear_next, any}, o, m, l);
        timeline(a, mi, wg, TL_STORED);
        timeline(a, mi, wg, TL_KWAIT, kwait);
        timeline(a, mi, wg, TL_VWAIT, vwait);
        timeline(a, mi, wg, TL_END);
    }
    trace(a, TR_EXIT, last, g, wg);
}

template<typename T, int D, typename SRC>
void launch_stacked(const common_args &a, const SRC &src, int num_ctas, cudaStream_t stream) {
    // Kernel parameters may take 32764 bytes (CUDA 12.1+, sm_70+); the CTA heads take ~17 KB.
    static_assert(sizeof(common_args) + sizeof(SRC) <= 32764, "kernel parameters too large");
    auto kern = stacked_attn_kernel<T, D, SRC>;
    constexpr size_t smem = tiles<T, D>::smem;
    // One attribute call per instantiation and device (not a stream op, so graph-safe).
    static bool configured[64] = {};
    int dev = 0;
    cudaGetDevice(&dev);
    if (dev >= 64 || !configured[dev]) {
        cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (dev < 64) configured[dev] = true;
    }
    // DECODE_WG: cta_items holds two entries a CTA (num_ctas here counts entries past the first)
    if (DECODE_WG) num_ctas /= 2;
    if (num_ctas > 0) kern<<<num_ctas, NTHREADS, smem, stream>>>(a, src);
}

}  // namespace attn_tk
