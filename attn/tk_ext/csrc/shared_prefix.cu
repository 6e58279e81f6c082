// shared_prefix_attention on ThunderKittens: the prefix phase and the suffix phase in ONE launch.
//
// Prefix-phase items stack the queries of every sequence of a level's group (x the GQA group's
// heads) against a split-K slice of that level's prefix tiles: a matrix-matrix product that reads
// the prefix once per group (Hydragen). Suffix-phase items are decode attention of one sequence
// over a slice of its ragged suffix. Both are work items of stacked.cuh; putting them in one
// grid lets the compute-heavy prefix items overlap the memory-bound suffix items.
// K/V tiles come from the [G, P, Hkv, D] / [B, S, Hkv, D] tensors directly: TMA along axis 1
// (tokens) at a fixed kv head, zero-filled past the end and masked in the kernel.
#include "stacked.cuh"
#include "common.h"

namespace attn_tk {

constexpr int MAX_SRC = 6;  // prefix levels + the suffix

// TAILS: the call has suffix_lens, so a suffix tile can end inside the tensor, past a length
// (stacked.cuh zeroes its V rows past the keys; tail_boxes). Without them the kernel is compiled
// without either: a branch in the tile loops cost workloads that never take it (session 29).
// WALK: the plan's leaf items may walk their sequences' suffixes after their own tiles (F_WALK,
// plan.walk_suffixes): tile t past the leaf's is tile u % spt of sequence seq0 + u / spt's suffix
// (u = t - the leaf's tiles, spt = the suffix's tiles a sequence), and only that sequence's rows
// see its keys. The producer passes the consumers that row range with the tile's valid keys
// (stage word: WALK_TAG | (sequence + 1) << 16 | keys; stacked.cuh mask_rows). Compiled in only
// for plans that walk.
template<typename T, int D, bool TAILS, bool WALK = false> struct level_src {
    using kv_tile = typename tiles<T, D>::kv_tile;
    static constexpr bool PAST_TAILS = TAILS;
    static constexpr bool WALKS = WALK;
    static_assert(!WALK || ATTN_TK_PREFETCH, "a walked tile's row range reaches the consumers in its stage word");
    // Whether a row-split item's tile can end inside the tensor, past a length: no, a row-split
    // item reads a prefix level, whose last tile ends at the tensor's end (TMA zero-fills past it).
    static constexpr bool ROW_SPLIT_TAILS = false;
    using lgl = gl<T, -1, -1, -1, -1, tma::descriptor<kv_tile, 1>>;
    lgl k0, v0, k1, v1, k2, v2, k3, v3, k4, v4, k5, v5;
    const int *lens;  // suffix_lens [B] or nullptr
    // The suffix again (with suffix_lens), by boxes of TAIL_BOX keys x 64 columns: the tile that
    // ends a ragged suffix loads only its boxes with keys (tail_boxes).
    using box_t = typename tiles<T, D>::box_tile;
    using bgl = gl<T, -1, -1, -1, -1, tma::descriptor<box_t, 1>>;
    bgl bk, bv;

    __device__ inline int keylen(const int *it) const {
        int kl = it[F_KEYLEN];
        return kl >= 0 ? kl : lens[it[F_GIDX]];
    }
    __device__ inline int ntiles(const int *it) const {
        if (WALK && it[F_WALK]) return it[F_TILE1] - it[F_TILE0];  // every walked tile, ragged ones past a length empty
        int avail = (keylen(it) + TILE - 1) / TILE;
        int n = min(it[F_TILE1], avail) - it[F_TILE0];
        return n > 0 ? n : 0;
    }
    __device__ inline int valid(const int *it, int t) const {
        if constexpr (WALK) return prep(it, t).valid;
        return keylen(it) - (it[F_TILE0] + t) * TILE;
    }
    __device__ inline void load(const int *it, int t, kv_tile &k, kv_tile &v, semaphore &kb, semaphore &vb) const {
        coord<kv_tile> c{it[F_GIDX], it[F_TILE0] + t, it[F_HEAD], 0};
        load_at(it[F_SRC], c, k, v, kb, vb);
    }
    // ATTN_TK_PREFETCH: a tile's metadata, read ahead of its stage's release. Only a suffix read
    // through suffix_lens (keylen < 0) has keys past a length inside the tensor: a prefix
    // level's or a full suffix's last tile ends at the tensor's end, past which TMA reads nothing.
    struct tile_ref { coord<kv_tile> c; int src, valid, boxes; };
    __device__ inline tile_ref prep(const int *it, int t) const {
        if constexpr (WALK) {
            const int wk = it[F_WALK];
            const int own = (it[F_KEYLEN] + TILE - 1) / TILE - it[F_TILE0];  // a leaf's keys are static
            if (wk && t >= own) {
                const int cap = wk >> WALK_CAP_SHIFT, spt = (cap + TILE - 1) / TILE, u = t - own;
                const int sl = u / spt, st = u - sl * spt, seq = it[F_SEQ0] + sl;
                const bool ragged = wk & WALK_RAGGED;
                const int vk = min((ragged ? lens[seq] : cap) - st * TILE, TILE);
                return {coord<kv_tile>{seq, st, it[F_HEAD], 0}, wk & ((1 << WALK_SRC_BITS) - 1),
                        vk > 0 ? WALK_TAG | (sl + 1) << 16 | vk : vk, TAILS && ragged ? tail_boxes(vk) : 0};
            }
        }
        const int vk = keylen(it) - (it[F_TILE0] + t) * TILE;
        return {coord<kv_tile>{it[F_GIDX], it[F_TILE0] + t, it[F_HEAD], 0}, it[F_SRC], vk,
                TAILS && it[F_KEYLEN] < 0 ? tail_boxes(vk) : 0};
    }
    __device__ inline int bytes(const tile_ref &r) const { return tile_bytes<T, D>(r.boxes); }
    __device__ inline void load(const tile_ref &r, kv_tile &k, kv_tile &v, semaphore &kb, semaphore &vb) const {
        load_part<3>(r, k, v, kb, vb);
    }
    // The decode ring of the *_dwg units loads a tile's K and V apart (ring_producer.cuh:
    // stream_tiles_split): WHICH 1 = K only, 2 = V only, 3 = both.
    template<int WHICH = 3>
    __device__ inline void load_at(int s, const coord<kv_tile> &c, kv_tile &k, kv_tile &v, semaphore &kb,
                                   semaphore &vb) const {
        switch (s) {
#define ATTN_TK_SRC(i) case i: \
            if constexpr (WHICH & 1) tma::load_async<1, cache_policy::NORMAL>(k, k##i, c, kb); \
            if constexpr (WHICH & 2) tma::load_async<1, cache_policy::NORMAL>(v, v##i, c, vb); break;
            ATTN_TK_SRC(0) ATTN_TK_SRC(1) ATTN_TK_SRC(2) ATTN_TK_SRC(3) ATTN_TK_SRC(4) ATTN_TK_SRC(5)
#undef ATTN_TK_SRC
        }
    }
    template<int WHICH>
    __device__ inline void load_part(const tile_ref &r, kv_tile &k, kv_tile &v, semaphore &kb, semaphore &vb) const {
        if (r.boxes) {
            for (int j = 0; j < r.boxes; j++) {
                #pragma unroll
                for (int h = 0; h < D / 64; h++) {
                    const coord<box_t> c{r.c.b, r.c.d * (TILE / TAIL_BOX) + j, r.c.r, h};
                    if constexpr (WHICH & 1) tma::load_async<1, cache_policy::NORMAL>(box_at<T, D>(k, j, h), bk, c, kb);
                    if constexpr (WHICH & 2) tma::load_async<1, cache_policy::NORMAL>(box_at<T, D>(v, j, h), bv, c, vb);
                }
            }
        } else {
            load_at<WHICH>(r.src, r.c, k, v, kb, vb);
        }
    }
};

template<typename T, int D, bool TAILS, bool WALK>
static void run_src(const at::Tensor &q, const std::vector<at::Tensor> &ks, const std::vector<at::Tensor> &vs,
                    const at::Tensor &lens, const at::Tensor &items, const at::Tensor &ctas, float scale, void *po, int hp,
                    float *pl, const at::Tensor &out, float *lse, const at::Tensor &heads, const queue_spec &qs) {
    using S = level_src<T, D, TAILS, WALK>;
    using lgl = typename S::lgl;
    auto mk = [&](const std::vector<at::Tensor> &xs, int i) {
        const at::Tensor &x = xs[i < (int)xs.size() ? i : 0];
        return lgl(reinterpret_cast<T *>(x.data_ptr()), (unsigned)x.size(0), (unsigned)x.size(1),
                   (unsigned)x.size(2), (unsigned)x.size(3));
    };
    using bgl = typename S::bgl;
    auto mkb = [&](const std::vector<at::Tensor> &xs) {  // the suffix: last of the sources
        const at::Tensor &x = xs.back();
        return bgl(reinterpret_cast<T *>(x.data_ptr()), (unsigned)x.size(0), (unsigned)x.size(1),
                   (unsigned)x.size(2), (unsigned)x.size(3));
    };
    S src{mk(ks, 0), mk(vs, 0), mk(ks, 1), mk(vs, 1), mk(ks, 2), mk(vs, 2),
          mk(ks, 3), mk(vs, 3), mk(ks, 4), mk(vs, 4), mk(ks, 5), mk(vs, 5),
          lens.defined() ? lens.data_ptr<int>() : nullptr, mkb(ks), mkb(vs)};
    common_args a{items.data_ptr<int>(), ctas.data_ptr<int>(), q.data_ptr(), q.stride(0), q.stride(1), (int)q.size(1),
                  (int)(q.size(1) / ks[0].size(2)), (int)(q.size(0) * q.size(1)),
                  scale * 1.4426950408889634f, po, pl, hp, out.data_ptr(), lse, sched_mode(), trace_ptr(), timeline_ptr()};
    if (heads.numel()) fill_heads(a, heads.data_ptr<int>(), heads.size(0));
    set_queue(a, qs);
    launch_stacked<T, D>(a, src, (int)ctas.size(0) - 1, c10::cuda::getCurrentCUDAStream());
}

template<typename T, int D>
static void run(const at::Tensor &q, const std::vector<at::Tensor> &ks, const std::vector<at::Tensor> &vs,
                const at::Tensor &lens, const at::Tensor &items, const at::Tensor &ctas, float scale, void *po, int hp, float *pl,
                const at::Tensor &out, float *lse, const at::Tensor &heads, const queue_spec &qs, bool walk) {
    // The decode warpgroup never runs walked items (decode_streams.solo_candidates): its form has no WALK kernels.
    if constexpr (!DECODE_WG) {
        if (walk) {
            if (lens.defined()) run_src<T, D, true, true>(q, ks, vs, lens, items, ctas, scale, po, hp, pl, out, lse, heads, qs);
            else run_src<T, D, false, true>(q, ks, vs, lens, items, ctas, scale, po, hp, pl, out, lse, heads, qs);
            return;
        }
    }
    if (lens.defined()) run_src<T, D, true, false>(q, ks, vs, lens, items, ctas, scale, po, hp, pl, out, lse, heads, qs);
    else run_src<T, D, false, false>(q, ks, vs, lens, items, ctas, scale, po, hp, pl, out, lse, heads, qs);
}

}  // namespace attn_tk

// Partial states of every item of a shared_prefix_attention call (see attn/tk_ext/plan.py).
// q [B, Hq, D]; ks, vs: the level tensors [G_i, P_i, Hkv, D] then the suffix [B, S, Hkv, D];
// items int32 [num_items, 12]; part_out [nslot, B*Hq, D] float32 or q's dtype; part_lse float [nslot, B*Hq];
// out [B*Hq, D] in q's dtype, lse float [B*Hq]: written by direct items (plan.mark_direct) only;
// heads int32 [num_ctas, HEAD_INTS] on the CPU (schedule.cta_heads), or empty: the kernel then
// reads every CTA's range and first unit from cta_items and items.
// counter int64 [2] and units int32 [n] on the GPU, or neither: the unit queue (unit_queue.cuh:
// counter zero and left zero; units in the order they are handed out; cta_items[c] then holds
// CTA c's first unit, and CTAs [0, front) take from the front of units, the others from the back).
// walk: some items walk their sequences' suffixes (F_WALK; the kernels with WALK, not the decode warpgroup's).
void tk_shared_prefix_partials(at::Tensor q, std::vector<at::Tensor> ks, std::vector<at::Tensor> vs,
                               c10::optional<at::Tensor> lens, at::Tensor items, at::Tensor cta_items, double scale,
                               at::Tensor part_out, at::Tensor part_lse, at::Tensor out, at::Tensor lse,
                               at::Tensor heads, c10::optional<at::Tensor> counter, c10::optional<at::Tensor> units,
                               int64_t front, bool walk) {
    using namespace attn_tk;
    const c10::cuda::CUDAGuard guard(q.device());  // launch on the tensors' GPU
    TORCH_CHECK(!ks.empty() && ks.size() == vs.size() && ks.size() <= (size_t)MAX_SRC, "tk: 1..6 K/V sources");
    TORCH_CHECK(items.dtype() == at::kInt && items.is_contiguous() && items.size(1) == ITEM_INTS, "tk: bad item table");
    at::Tensor l = lens.has_value() ? *lens : at::Tensor();
    TORCH_CHECK(!heads.numel() || (heads.device().is_cpu() && heads.dtype() == at::kInt && heads.is_contiguous() &&
                                   heads.dim() == 2 && heads.size(1) == HEAD_INTS && heads.size(0) == cta_items.size(0) - 1),
                "tk: CTA heads must be int32 [num_ctas, HEAD_INTS] on the CPU");
    queue_spec qs;
    TORCH_CHECK(!DECODE_WG || !counter.has_value(), "tk: the decode-warpgroup kernels take no unit queue");
    TORCH_CHECK(!DECODE_WG || !walk, "tk: the decode-warpgroup kernels run no walked items");
    check_queue(q, counter, units, front, cta_items.size(0) - 1, &qs.queue, &qs.units, &qs.nunits);
    qs.front = (int)front;
    const int d = (int)q.size(2);
    check_direct_outputs(q, out, lse);
    const int hp = check_partials(q, part_out);
    void *po = part_out.data_ptr();
    float *pl = part_lse.data_ptr<float>(), *lp = lse.data_ptr<float>();
    const float s = (float)scale;
    if (q.scalar_type() == at::kBFloat16) {
        if (d == 64) attn_tk::run<bf16, 64>(q, ks, vs, l, items, cta_items, s, po, hp, pl, out, lp, heads, qs, walk);
        else attn_tk::run<bf16, 128>(q, ks, vs, l, items, cta_items, s, po, hp, pl, out, lp, heads, qs, walk);
    } else {
        if (d == 64) attn_tk::run<half, 64>(q, ks, vs, l, items, cta_items, s, po, hp, pl, out, lp, heads, qs, walk);
        else attn_tk::run<half, 128>(q, ks, vs, l, items, cta_items, s, po, hp, pl, out, lp, heads, qs, walk);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

