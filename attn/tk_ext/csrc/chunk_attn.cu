// chunk_attention on ThunderKittens: the chunk-first phase and the sequence-first phase in ONE
// launch (ChunkAttention's two phases as work items of stacked.cuh).
//
// Chunk-first items stack the queries of sequences [begin, end) (x the GQA group's heads)
// against a run of chunks they all share, read once; sequence-first items are decode attention
// of one sequence over its private chunks (split-K when long). An item's chunks are a slice of
// a host-built chunk list; a chunk of one kv head is a contiguous [C, D] tile of the pool, so
// TMA loads it directly (C > 64: ceil(C / 64) tiles per chunk; rows past chunk_lens masked).
#include "stacked.cuh"
#include "common.h"

namespace attn_tk {

// TAILS: some chunk of the table is partial (the host knows: attn/tk_ext/backend.py), so a tile
// can end inside the pool, past a length (stacked.cuh zeroes its V rows past the keys;
// tail_boxes). Without any, the kernel is compiled without either (see shared_prefix.cu).
template<typename T, int D, bool TAILS> struct chunk_src {
    using kv_tile = typename tiles<T, D>::kv_tile;
    static constexpr bool PAST_TAILS = TAILS;
    static constexpr bool WALKS = false;  // chunk plans walk nothing (level mode's F_WALK)
    // Whether a row-split item's tile can end inside the tensor, past a length: yes, a shared run of
    // chunks can end in a partial chunk.
    static constexpr bool ROW_SPLIT_TAILS = TAILS;
    using cgl = gl<T, -1, -1, -1, -1, kv_tile>;
    cgl k, v;
    const int *clist;       // chunk ids of every item, concatenated
    const int *chunk_lens;  // [num_chunks]
    int tpc;                // tiles per chunk: ceil(C / 64)
    // The pools again, by boxes of TAIL_BOX keys x 64 columns: the tile that ends a partial chunk
    // loads only its boxes with keys (tail_boxes).
    using box_t = typename tiles<T, D>::box_tile;
    using bgl = gl<T, -1, -1, -1, -1, box_t>;
    bgl bk, bv;

    __device__ inline int ntiles(const int *it) const { return it[F_TILE1] - it[F_TILE0]; }
    __device__ inline int valid(const int *it, int t) const {
        int g = it[F_TILE0] + t;
        int c = clist[it[F_GIDX] + g / tpc];
        return chunk_lens[c] - (g % tpc) * TILE;
    }
    __device__ inline void load(const int *it, int t, kv_tile &kt, kv_tile &vt, semaphore &kb, semaphore &vb) const {
        int g = it[F_TILE0] + t;
        int c = clist[it[F_GIDX] + g / tpc];
        coord<kv_tile> co{c, it[F_HEAD], g % tpc, 0};
        tma::load_async<2, cache_policy::NORMAL>(kt, k, co, kb);
        tma::load_async<2, cache_policy::NORMAL>(vt, v, co, vb);
    }
    // ATTN_TK_PREFETCH: a tile's chunk id and length, read ahead of its stage's release.
    struct tile_ref { coord<kv_tile> c; int valid, boxes; };
    __device__ inline tile_ref prep(const int *it, int t) const {
        int g = it[F_TILE0] + t;
        int c = clist[it[F_GIDX] + g / tpc];
        const int vk = chunk_lens[c] - (g % tpc) * TILE;
        return {coord<kv_tile>{c, it[F_HEAD], g % tpc, 0}, vk, TAILS ? tail_boxes(vk) : 0};
    }
    __device__ inline int bytes(const tile_ref &r) const { return tile_bytes<T, D>(r.boxes); }
    // The decode ring of the *_dwg units loads a tile's K and V apart (ring_producer.cuh:
    // stream_tiles_split): WHICH 1 = K only, 2 = V only, 3 = both.
    template<int WHICH = 3>
    __device__ inline void load_part(const tile_ref &r, kv_tile &kt, kv_tile &vt, semaphore &kb, semaphore &vb) const {
        if (r.boxes) {
            for (int j = 0; j < r.boxes; j++) {
                #pragma unroll
                for (int h = 0; h < D / 64; h++) {
                    const coord<box_t> c{r.c.b, r.c.d, r.c.r * (TILE / TAIL_BOX) + j, h};
                    if constexpr (WHICH & 1) tma::load_async<2, cache_policy::NORMAL>(box_at<T, D>(kt, j, h), bk, c, kb);
                    if constexpr (WHICH & 2) tma::load_async<2, cache_policy::NORMAL>(box_at<T, D>(vt, j, h), bv, c, vb);
                }
            }
        } else {
            if constexpr (WHICH & 1) tma::load_async<2, cache_policy::NORMAL>(kt, k, r.c, kb);
            if constexpr (WHICH & 2) tma::load_async<2, cache_policy::NORMAL>(vt, v, r.c, vb);
        }
    }
    __device__ inline void load(const tile_ref &r, kv_tile &kt, kv_tile &vt, semaphore &kb, semaphore &vb) const {
        load_part(r, kt, vt, kb, vb);
    }
};

template<typename T, int D, bool TAILS>
static void run_src(const at::Tensor &q, const at::Tensor &kc, const at::Tensor &vc, const at::Tensor &clist,
                    const at::Tensor &clens, const at::Tensor &items, const at::Tensor &ctas, float scale, void *po, int hp,
                    float *pl, const at::Tensor &out, float *lse, const at::Tensor &heads, const queue_spec &qs) {
    using S = chunk_src<T, D, TAILS>;
    using cgl = typename S::cgl;
    auto mk = [&](const at::Tensor &x) {
        return cgl(reinterpret_cast<T *>(x.data_ptr()), (unsigned)x.size(0), (unsigned)x.size(1),
                   (unsigned)x.size(2), (unsigned)x.size(3));
    };
    using bgl = typename S::bgl;
    auto mkb = [&](const at::Tensor &x) {
        return bgl(reinterpret_cast<T *>(x.data_ptr()), (unsigned)x.size(0), (unsigned)x.size(1),
                   (unsigned)x.size(2), (unsigned)x.size(3));
    };
    S src{mk(kc), mk(vc), clist.data_ptr<int>(), clens.data_ptr<int>(), (int)((kc.size(2) + TILE - 1) / TILE),
          mkb(kc), mkb(vc)};
    common_args a{items.data_ptr<int>(), ctas.data_ptr<int>(), q.data_ptr(), q.stride(0), q.stride(1), (int)q.size(1),
                  (int)(q.size(1) / kc.size(1)), (int)(q.size(0) * q.size(1)),
                  scale * 1.4426950408889634f, po, pl, hp, out.data_ptr(), lse, sched_mode(), trace_ptr(), timeline_ptr()};
    if (heads.numel()) fill_heads(a, heads.data_ptr<int>(), heads.size(0));
    set_queue(a, qs);
    launch_stacked<T, D>(a, src, (int)ctas.size(0) - 1, c10::cuda::getCurrentCUDAStream());
}

template<typename T, int D>
static void run(const at::Tensor &q, const at::Tensor &kc, const at::Tensor &vc, const at::Tensor &clist,
                const at::Tensor &clens, bool tails, const at::Tensor &items, const at::Tensor &ctas, float scale, void *po,
                int hp, float *pl, const at::Tensor &out, float *lse, const at::Tensor &heads, const queue_spec &qs) {
    if (tails) run_src<T, D, true>(q, kc, vc, clist, clens, items, ctas, scale, po, hp, pl, out, lse, heads, qs);
    else run_src<T, D, false>(q, kc, vc, clist, clens, items, ctas, scale, po, hp, pl, out, lse, heads, qs);
}

}  // namespace attn_tk

// Partial states of every item of a chunk_attention call (see attn/tk_ext/plan.py).
// q [N, Hq, D]; k_chunks, v_chunks [num_chunks, Hkv, C, D] contiguous; chunk_list int32;
// chunk_lens int32 [num_chunks]; tails: whether any chunk_lens[c] < C (the kernel trusts it: with
// false, rows past a partial chunk's length would reach the output); items int32 [num_items, 12];
// partials, out / lse and heads as in shared_prefix.cu.
void tk_chunk_partials(at::Tensor q, at::Tensor k_chunks, at::Tensor v_chunks, at::Tensor chunk_list,
                       at::Tensor chunk_lens, bool tails, at::Tensor items, at::Tensor cta_items, double scale,
                       at::Tensor part_out, at::Tensor part_lse, at::Tensor out, at::Tensor lse,
                       at::Tensor heads, c10::optional<at::Tensor> counter, c10::optional<at::Tensor> units,
                       int64_t front) {
    using namespace attn_tk;
    const c10::cuda::CUDAGuard guard(q.device());  // launch on the tensors' GPU
    TORCH_CHECK(items.dtype() == at::kInt && items.is_contiguous() && items.size(1) == ITEM_INTS, "tk: bad item table");
    TORCH_CHECK(k_chunks.is_contiguous() && v_chunks.is_contiguous(), "tk: chunk pools must be contiguous");
    TORCH_CHECK(!heads.numel() || (heads.device().is_cpu() && heads.dtype() == at::kInt && heads.is_contiguous() &&
                                   heads.dim() == 2 && heads.size(1) == HEAD_INTS && heads.size(0) == cta_items.size(0) - 1),
                "tk: CTA heads must be int32 [num_ctas, HEAD_INTS] on the CPU");
    queue_spec qs;
    TORCH_CHECK(!DECODE_WG || !counter.has_value(), "tk: the decode-warpgroup kernels take no unit queue");
    check_queue(q, counter, units, front, cta_items.size(0) - 1, &qs.queue, &qs.units, &qs.nunits);
    qs.front = (int)front;
    const int d = (int)q.size(2);
    check_direct_outputs(q, out, lse);
    const int hp = check_partials(q, part_out);
    void *po = part_out.data_ptr();
    float *pl = part_lse.data_ptr<float>(), *lp = lse.data_ptr<float>();
    const float s = (float)scale;
    if (q.scalar_type() == at::kBFloat16) {
        if (d == 64) attn_tk::run<bf16, 64>(q, k_chunks, v_chunks, chunk_list, chunk_lens, tails, items, cta_items, s, po, hp, pl, out, lp, heads, qs);
        else attn_tk::run<bf16, 128>(q, k_chunks, v_chunks, chunk_list, chunk_lens, tails, items, cta_items, s, po, hp, pl, out, lp, heads, qs);
    } else {
        if (d == 64) attn_tk::run<half, 64>(q, k_chunks, v_chunks, chunk_list, chunk_lens, tails, items, cta_items, s, po, hp, pl, out, lp, heads, qs);
        else attn_tk::run<half, 128>(q, k_chunks, v_chunks, chunk_list, chunk_lens, tails, items, cta_items, s, po, hp, pl, out, lp, heads, qs);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}
