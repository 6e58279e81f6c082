// The stacked kernel's producer: one thread streams the K/V tiles of a CTA's items through the
// ring with TMA, as far ahead as released stages allow.
#pragma once

#include "stacked_layout.cuh"
#include "stacked_debug.cuh"
#include "unit_queue.cuh"

namespace attn_tk {

using namespace kittens;

// Tiles of the CTA's units (items [first, last), or those of the unit queue: unit_queue.cuh)
// into ring stages g % STAGES. Before loading a stage it writes
// the tile's valid keys into stage_valid (read by the consumers after their k_full wait).
// A pair's tiles alternate between its items (ring tile t: item i + t % 2, its tile t / 2), so
// each warpgroup takes every other tile as in a lone kv-split item; the shorter item's turns
// past its end (dynamic lengths) are empty stages, armed with a plain arrive.
template<int STAGES, typename SRC, typename KV>
__device__ inline void stream_tiles(const common_args &a, const SRC &src, int first, int last, const int *head,
                                    unit_feed *feed, KV *k_smem, KV *v_smem,
                                    semaphore *k_full, semaphore *v_full, semaphore *done, int *stage_valid,
                                    semaphore *q_first) {
    int g = 0;  // tiles issued so far
    int k = 0;  // units after the first
    for (int i = first_unit(a, first, last); i >= 0; i = next_unit<false>(a, *feed, k++, i + 1, last)) {
        const int *it = item_at(a, head, i, first);
        const bool pair = it[F_FLAGS] & FLAG_PAIR;
        const int na = src.ntiles(it), nb = pair ? src.ntiles(it + ITEM_INTS) : 0;
        const int n = pair ? 2 * max(na, nb) : na;
        for (int t = 0; t < n; t++, g++) {
            int s = g % STAGES;
            const int *is = it + (pair && (t & 1) ? ITEM_INTS : 0);
            const int tt = pair ? t / 2 : t;
            trace(a, TR_DONE, i, g, s);
            bool live = tt < (pair && (t & 1) ? nb : na);
            typename SRC::tile_ref ref{};
            if (ATTN_TK_PREFETCH && live) ref = src.prep(is, tt);  // its loads land while the stage is still in use
            if constexpr (SRC::WALKS) live = live && ref.valid > 0;  // a walked suffix's tiles past its length: empty
            if (ATTN_TK_Q_FIRST && g == 1) wait(*q_first, 0);
            if (g >= STAGES) wait(done[s], ((g / STAGES) - 1) & 1);
            if (live) {
                stage_valid[s] = ATTN_TK_PREFETCH ? ref.valid : src.valid(is, tt);
                const int bytes = ATTN_TK_PREFETCH ? src.bytes(ref) : (int)sizeof(KV);  // (a ragged tail: its boxes)
                tma::expect_bytes(k_full[s], bytes);
                tma::expect_bytes(v_full[s], bytes);
                if constexpr (ATTN_TK_PREFETCH) src.load(ref, k_smem[s], v_smem[s], k_full[s], v_full[s]);
                else src.load(is, tt, k_smem[s], v_smem[s], k_full[s], v_full[s]);
            } else {
                stage_valid[s] = 0;  // consumers skip it (and wait for v_full: done here)
                arrive(k_full[s]);
                arrive(v_full[s]);
            }
            trace(a, TR_LOADED, i, g, s);
        }
        i += pair;
    }
    trace(a, TR_EXIT, last, g, 0);
}

// The decode ring of the *_dwg units: the tiles of a decode list's items (solo, never pairs)
// with K and V in rings of their own, KS and VS stages deep, each stage released on its own
// (k_done after the tile's S^T wgmma, v_done after its O^T one: decode_wg.cuh). Why: shared
// memory. A K+V stage is 32 KB at D = 128; with the decode ring two such stages deep the prefix
// ring keeps 3 of its 4 stages and 2 of its 3 query slots. Released apart, tile t + 1's K loads
// while tile t's softmax and P V run, and its V while its own S^T runs, so that one stage of
// each could be a pipeline; on an H200 it was not quite one (stacked_layout.cuh
// ATTN_TK_DEC_KSTAGES: solo items 9.5 -> 10.4 us). stage_valid is indexed by the K stage.
template<int KS, int VS, typename SRC, typename KV>
__device__ inline void stream_tiles_split(const common_args &a, const SRC &src, int first, int last,
                                          KV *k_smem, KV *v_smem, semaphore *k_full, semaphore *v_full,
                                          semaphore *k_done, semaphore *v_done, int *stage_valid) {
    int g = 0;
    for (int i = first; i < last; i++) {
        const int *it = a.items + (long)i * ITEM_INTS;
        const int n = src.ntiles(it);
        for (int t = 0; t < n; t++, g++) {
            const int ks = g % KS, vs = g % VS;
            const typename SRC::tile_ref ref = src.prep(it, t);  // its loads land while the stages are in use
            if (g >= KS) wait(k_done[ks], ((g / KS) - 1) & 1);
            stage_valid[ks] = ref.valid;
            tma::expect_bytes(k_full[ks], src.bytes(ref));
            src.template load_part<1>(ref, k_smem[ks], v_smem[vs], k_full[ks], v_full[vs]);
            if (g >= VS) wait(v_done[vs], ((g / VS) - 1) & 1);
            tma::expect_bytes(v_full[vs], src.bytes(ref));
            src.template load_part<2>(ref, k_smem[ks], v_smem[vs], k_full[ks], v_full[vs]);
        }
    }
}

}  // namespace attn_tk
