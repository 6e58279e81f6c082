// LSE merge of partial attention states: outs [K, R, D] (float32 or half-precision partials,
// or the user's dtype for merge_states), lses float32 [K, R] natural log -> out [R, D], lse [R].
// States with lse = -inf carry no keys and are never read (their out may be garbage), so
// partial buffers need only their lse initialised. A row with no key gets out = 0, lse = -inf.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include "common.h"

namespace attn_tk {

template<typename T> __device__ inline float to_f(T x);
template<> __device__ inline float to_f<float>(float x) { return x; }
template<> __device__ inline float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template<> __device__ inline float to_f<__half>(__half x) { return __half2float(x); }
template<typename T> __device__ inline T from_f(float x);
template<> __device__ inline float from_f<float>(float x) { return x; }
template<> __device__ inline __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template<> __device__ inline __half from_f<__half>(float x) { return __float2half(x); }

// The merge kernels' walk over a row's states, 32 at a time: folds the lses of states
// [k0, k0 + 32) into the row's running max m and sum l, calling rescale_acc(r) when the
// accumulators must follow the max, and sets w to lane k's weight of state k0 + k (0 past K and
// for states without keys). False when no state of the chunk has keys: the chunk is skipped.
template<typename F>
__device__ inline bool fold_lses(const float *__restrict__ lses, int k0, int K, long R, long row, int lane, float &m,
                                 float &l, float &w, F &&rescale_acc) {
    float s = k0 + lane < K ? lses[(long)(k0 + lane) * R + row] : -INFINITY;
    float mk = s;
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) mk = fmaxf(mk, __shfl_xor_sync(0xffffffffu, mk, o));
    if (mk == -INFINITY) return false;
    float m_new = fmaxf(m, mk);
    float rescale = m == -INFINITY ? 0.f : __expf(m - m_new);
    l *= rescale;
    rescale_acc(rescale);
    m = m_new;
    w = s == -INFINITY ? 0.f : __expf(s - m);
    float ws = w;
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) ws += __shfl_xor_sync(0xffffffffu, ws, o);
    l += ws;
    return true;
}

// One warp per row; each lane holds D / 32 columns. The lanes read the K lses in parallel
// (lane k holds state k's weight), so no load waits on another: a row costs about one
// memory latency plus its bytes, not K latencies.
template<typename TI, typename TO>
__global__ void merge_kernel(const TI *__restrict__ outs, const float *__restrict__ lses, TO *__restrict__ out,
                             float *__restrict__ lse, int K, long R, int D) {
    long row = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= R) return;
    float acc[8];
    #pragma unroll
    for (int i = 0; i < 8; i++) acc[i] = 0.f;
    float m = -INFINITY, l = 0.f;
    for (int k0 = 0; k0 < K; k0 += 32) {
        float w;
        if (!fold_lses(lses, k0, K, R, row, lane, m, l, w, [&](float r) {
                #pragma unroll
                for (int i = 0; i < 8; i++) acc[i] *= r;
            }))
            continue;
        int kn = min(32, K - k0);
        #pragma unroll 4
        for (int k = 0; k < kn; k++) {
            float wk = __shfl_sync(0xffffffffu, w, k);
            if (wk == 0.f) continue;  // a state with no keys: its out is never read
            const TI *src = outs + ((long)(k0 + k) * R + row) * D;
            #pragma unroll
            for (int i = 0; i < 8; i++) {
                int c = lane + 32 * i;
                if (c < D) acc[i] += wk * to_f<TI>(src[c]);
            }
        }
    }
    float inv = l > 0.f ? 1.f / l : 0.f;
    #pragma unroll
    for (int i = 0; i < 8; i++) {
        int c = lane + 32 * i;
        if (c < D) out[row * D + c] = from_f<TO>(acc[i] * inv);
    }
    if (lane == 0) lse[row] = l > 0.f ? m + logf(l) : -INFINITY;
}

// The internal path (partials in float32 or the op's dtype, D <= 128): lane l owns columns
// [4l, 4l + 4), so each state costs one 16- or 8-byte load per lane instead of D / 32 scalar
// loads.
template<typename TI> __device__ inline float4 load4(const TI *p);
template<> __device__ inline float4 load4<float>(const float *p) { return *reinterpret_cast<const float4 *>(p); }
template<> __device__ inline float4 load4<__nv_bfloat16>(const __nv_bfloat16 *p) {
    uint2 u = *reinterpret_cast<const uint2 *>(p);
    float2 a = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(&u.x));
    float2 b = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
}
template<> __device__ inline float4 load4<__half>(const __half *p) {
    uint2 u = *reinterpret_cast<const uint2 *>(p);
    float2 a = __half22float2(*reinterpret_cast<__half2 *>(&u.x));
    float2 b = __half22float2(*reinterpret_cast<__half2 *>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
}

template<typename TI, typename TO>
__global__ void merge_v4_kernel(const TI *__restrict__ outs, const float *__restrict__ lses, TO *__restrict__ out,
                                float *__restrict__ lse, int K, long R, int D) {
    long row = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= R) return;
    const bool mine = lane * 4 < D;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    float m = -INFINITY, l = 0.f;
    for (int k0 = 0; k0 < K; k0 += 32) {
        float w;
        if (!fold_lses(lses, k0, K, R, row, lane, m, l, w,
                       [&](float r) { acc.x *= r; acc.y *= r; acc.z *= r; acc.w *= r; }))
            continue;
        int kn = min(32, K - k0);
        #pragma unroll 4
        for (int k = 0; k < kn; k++) {
            float wk = __shfl_sync(0xffffffffu, w, k);
            if (wk == 0.f || !mine) continue;  // a state with no keys: its out is never read
            float4 v = load4<TI>(outs + ((long)(k0 + k) * R + row) * D + lane * 4);
            acc.x += wk * v.x; acc.y += wk * v.y; acc.z += wk * v.z; acc.w += wk * v.w;
        }
    }
    float inv = l > 0.f ? 1.f / l : 0.f;
    if (mine) {
        TO *dst = out + row * D + lane * 4;
        dst[0] = from_f<TO>(acc.x * inv);
        dst[1] = from_f<TO>(acc.y * inv);
        dst[2] = from_f<TO>(acc.z * inv);
        dst[3] = from_f<TO>(acc.w * inv);
    }
    if (lane == 0) lse[row] = l > 0.f ? m + logf(l) : -INFINITY;
}

// The internal path for D a multiple of 8 up to 128 (16-byte aligned): LPS lanes hold one
// state's row (8 columns each), so a warp reads 32 / LPS states side by side, GROUP of them
// per lane in flight before any is used. The states' weights are known once their lses are
// (each 32-state chunk's max first), so the sub-warps' sums are independent and add up at the
// end: a row of K states costs about K / (32 / LPS * GROUP) memory latencies, not K.
template<typename TI> struct raw8 { uint4 a; };
template<> struct raw8<float> { float4 a, b; };
template<typename TI> __device__ inline raw8<TI> load_raw8(const TI *p) { return {*reinterpret_cast<const uint4 *>(p)}; }
template<> __device__ inline raw8<float> load_raw8<float>(const float *p) {
    return {reinterpret_cast<const float4 *>(p)[0], reinterpret_cast<const float4 *>(p)[1]};
}
template<typename TI> __device__ inline float2 to_f2(uint32_t x);
template<> __device__ inline float2 to_f2<__nv_bfloat16>(uint32_t x) {
    __nv_bfloat162 h;
    memcpy(&h, &x, 4);
    return __bfloat1622float2(h);
}
template<> __device__ inline float2 to_f2<__half>(uint32_t x) {
    __half2 h;
    memcpy(&h, &x, 4);
    return __half22float2(h);
}
template<typename TI> __device__ inline void add2(float &a0, float &a1, float w, uint32_t x) {
    const float2 f = to_f2<TI>(x);
    a0 += w * f.x;
    a1 += w * f.y;
}
template<typename TI> __device__ inline void add8(float (&acc)[8], float w, const raw8<TI> &u) {
    add2<TI>(acc[0], acc[1], w, u.a.x);
    add2<TI>(acc[2], acc[3], w, u.a.y);
    add2<TI>(acc[4], acc[5], w, u.a.z);
    add2<TI>(acc[6], acc[7], w, u.a.w);
}
template<> __device__ inline void add8<float>(float (&acc)[8], float w, const raw8<float> &u) {
    acc[0] += w * u.a.x; acc[1] += w * u.a.y; acc[2] += w * u.a.z; acc[3] += w * u.a.w;
    acc[4] += w * u.b.x; acc[5] += w * u.b.y; acc[6] += w * u.b.z; acc[7] += w * u.b.w;
}
template<typename TO> __device__ inline uint32_t pack2(float x, float y);
template<> __device__ inline uint32_t pack2<__nv_bfloat16>(float x, float y) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}
template<> __device__ inline uint32_t pack2<__half>(float x, float y) {
    __half2 h = __floats2half2_rn(x, y);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}
template<typename TO> __device__ inline void store8(TO *p, const float (&v)[8]) {
    *reinterpret_cast<uint4 *>(p) = make_uint4(pack2<TO>(v[0], v[1]), pack2<TO>(v[2], v[3]), pack2<TO>(v[4], v[5]),
                                               pack2<TO>(v[6], v[7]));
}
template<> __device__ inline void store8<float>(float *p, const float (&v)[8]) {
    reinterpret_cast<float4 *>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4 *>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// GROUP and the blocks per SM the registers are budgeted for. H200, runs 0073-0076: one load
// per lane in flight at 8 blocks of 256 (32 registers: all 64 warps of an SM resident, an
// 8192-row merge in one wave) beat two at 6 blocks and four at 4 (gqa-8b 1.4 %, hydragen-mqa
// 1.8 %, tree-3level up to 1.1 %; gqa-8b-long, 17 slots, 0.7-0.9 % slower). float32 states
// need 40 registers (6 blocks) not to spill.
#ifndef MERGE_V8_GROUP
#define MERGE_V8_GROUP 1
#endif
// ATTN_TK_MERGE_PREFETCH=n: each 32-state chunk's first n passes of states (a pass: 32 / LPS
// states side by side, GROUP each) are loaded before the chunk's lses are folded (0: none), so
// that their latencies overlap the lses'. H200 (one call each, every variant against n = 0):
// n = 1 -0.6 % in the geometric mean, every sharing case 0.1-1.3 % faster (tree-3level 0.8-1.3,
// gqa-8b 0.3-1.2, hydragen-mqa 0.6-0.8), no-share (no merge) within 0.1 % (runs 0133 vs 0134;
// an earlier form of n = 1, which spilled 8 bytes, -0.2 / -0.3 % in runs 0129 / 0132 vs 0130);
// n = 2 -0.3 % (spills 24 bytes at 32 registers), n = 2 at 6 blocks of 256 (40 registers)
// -0.5 % (runs 0135, 0136). The tk tests (then tests/test_tk.py) passed on n = 1 and n = 2 (301 each).
#ifndef ATTN_TK_MERGE_PREFETCH
#define ATTN_TK_MERGE_PREFETCH 1
#endif
constexpr int MERGE_PREFETCH = ATTN_TK_MERGE_PREFETCH;
// ATTN_TK_MERGE_COMPACT: after the early passes, a pass reads the next states that have keys
// instead of the next slots. 1 (default): in the narrow kernel only; 2: in the WIDE one too; 0:
// never. Run 0139 vs 0138 (H200, one call): tree-3level 1.1-1.7 % faster (9 slots, 6 with keys:
// 3 passes -> 2), chunkattn-mha 0.5-0.8 % (6 slots, 3 with keys: 2 -> 1), the rest within 0.4 %.
// In the WIDE kernel (gqa-8b-long, 16 of 17 slots with keys) it saves no pass and its ballot
// and lane shuffles cost: COMPACT=2 with WIDE=12 took 0.7 % of WIDE's gain on gqa-8b-long
// (run 0137 against 0140).
#ifndef ATTN_TK_MERGE_COMPACT
#define ATTN_TK_MERGE_COMPACT 1
#endif
// ATTN_TK_MERGE_WIDE=k (k > 0, default 12): rows of k or more states take the WIDE kernel, 8
// states a pass at D = 128 instead of 2. gqa-8b-long's rows have 17 slots, 16 with keys, on
// only 2048 rows (~16 warps per SM), so occupancy cannot hide a latency per pass: 7.3 passes ->
// 2, and run 0140 vs 0138 (H200) 1.4-1.7 % faster on gqa-8b-long, the rest within 0.3 %. 0: off.
#ifndef ATTN_TK_MERGE_WIDE
#define ATTN_TK_MERGE_WIDE 12
#endif
constexpr int MERGE_WIDE = ATTN_TK_MERGE_WIDE;
// ATTN_TK_MERGE_WIDE_ROWS=r (r > 0, default 2048; 0: off): merges of r rows or fewer whose rows
// hold more than one narrow pass of states take the WIDE kernel too, whatever their state
// count: with few warps per SM nothing hides a pass's latency. chunkattn-mha (1024 rows of 6
// states) 0.3-0.6 % faster, run 0150 vs 0149 (H200), as with WIDE=6 in run 0146 vs 0143, which
// also sent tree-3level's 4096 rows of 9 to it and slowed them 1.7-2.1 %; the rest within 0.4 %.
#ifndef ATTN_TK_MERGE_WIDE_ROWS
#define ATTN_TK_MERGE_WIDE_ROWS 2048
#endif
template<typename TI> constexpr int merge_v8_blocks() {
#ifdef MERGE_V8_BLOCKS
    return MERGE_V8_BLOCKS;
#else
    return sizeof(TI) == 4 ? 6 : 8;
#endif
}

// WIDE: the kernel for rows of many states (ATTN_TK_MERGE_WIDE): four times GROUP loads in
// flight per lane, budgeted for a quarter of the blocks.
template<typename TI, typename TO, int LPS, bool WIDE = false>
__global__ void __launch_bounds__(256, WIDE ? (merge_v8_blocks<TI>() + 3) / 4 : merge_v8_blocks<TI>())
merge_v8_kernel(const TI *__restrict__ outs, const float *__restrict__ lses, TO *__restrict__ out,
                float *__restrict__ lse, int K, long R, int D) {
    constexpr int SP = 32 / LPS;                        // states side by side
    constexpr int GROUP = (sizeof(TI) == 4 ? (MERGE_V8_GROUP + 1) / 2 : MERGE_V8_GROUP) * (WIDE ? 4 : 1);  // loads in flight per lane
    static_assert(32 % (SP * GROUP) == 0, "a pass stays inside one 32-state chunk");
    constexpr int PASS = SP * GROUP, PF = MERGE_PREFETCH;  // states per pass; passes loaded early
    static_assert(PF * PASS <= 32, "the early passes stay inside one 32-state chunk");
    constexpr bool COMPACT = ATTN_TK_MERGE_COMPACT == 2 || (ATTN_TK_MERGE_COMPACT == 1 && !WIDE);
    long row = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= R) return;
    const int col = (lane % LPS) * 8, sub = lane / LPS;
    const bool mine = col < D;
    float acc[8];
    #pragma unroll
    for (int i = 0; i < 8; i++) acc[i] = 0.f;
    float m = -INFINITY, l = 0.f;
    for (int k0 = 0; k0 < K; k0 += 32) {
        const int kn = min(32, K - k0);
        const TI *src = outs + ((long)k0 * R + row) * D + col;
        // ATTN_TK_MERGE_PREFETCH passes of the chunk's states are loaded before its lses are
        // folded, so that their latencies overlap (a state's weight is applied, or the state
        // dropped, only once it is known: a -inf state's out may be any bits).
        raw8<TI> pre[PF > 0 ? PF : 1][GROUP];
        #pragma unroll
        for (int p = 0; p < PF; p++) {
            #pragma unroll
            for (int j = 0; j < GROUP; j++) {
                const int k = p * PASS + sub + SP * j;
                pre[p][j] = {};
                if (mine && k < kn) pre[p][j] = load_raw8<TI>(src + (long)k * R * D);
            }
        }
        float w;
        if (!fold_lses(lses, k0, K, R, row, lane, m, l, w, [&](float r) {
                #pragma unroll
                for (int i = 0; i < 8; i++) acc[i] *= r;
            }))
            continue;
        #pragma unroll
        for (int p = 0; p < PF; p++) {
            #pragma unroll
            for (int j = 0; j < GROUP; j++) {
                const float wk = __shfl_sync(0xffffffffu, w, p * PASS + sub + SP * j);
                if (wk != 0.f) add8<TI>(acc, wk, pre[p][j]);
            }
        }
        if constexpr (COMPACT) {
            // The states past the early passes that have keys, PASS at a time: a pass then holds
            // only states that are read (a paired or row-split item leaves slot + 1 at -inf, so
            // about half of a decode-heavy row's slots are empty), and a row costs one latency per
            // PASS states it has, not per PASS slots. Lane sub takes the pass's sub + SP j-th state.
            constexpr unsigned EARLY = PF * PASS >= 32 ? 0xffffffffu : (1u << (PF * PASS)) - 1u;  // read above
            for (unsigned rest = __ballot_sync(0xffffffffu, w != 0.f) & ~EARLY; rest;) {
                raw8<TI> v[GROUP];
                float wk[GROUP];
                int ks[PASS];
                #pragma unroll
                for (int t = 0; t < PASS; t++) {  // the pass's states, in order (-1: none)
                    ks[t] = rest ? __ffs(rest) - 1 : -1;
                    rest &= rest - 1;
                }
                #pragma unroll
                for (int j = 0; j < GROUP; j++) {
                    int k = -1;
                    #pragma unroll
                    for (int t = 0; t < PASS; t++) k = t == sub + SP * j ? ks[t] : k;
                    wk[j] = __shfl_sync(0xffffffffu, w, k < 0 ? 0 : k);
                    if (k < 0) wk[j] = 0.f;
                    v[j] = {};
                    if (wk[j] != 0.f && mine) v[j] = load_raw8<TI>(src + (long)k * R * D);
                }
                #pragma unroll
                for (int j = 0; j < GROUP; j++) add8<TI>(acc, wk[j], v[j]);
            }
        } else {
            for (int kb = PF * PASS; kb < kn; kb += PASS) {
                raw8<TI> v[GROUP];
                float wk[GROUP];
                #pragma unroll
                for (int j = 0; j < GROUP; j++) {
                    const int k = kb + sub + SP * j;
                    wk[j] = __shfl_sync(0xffffffffu, w, k);
                    v[j] = {};
                    if (wk[j] != 0.f && mine) v[j] = load_raw8<TI>(src + (long)k * R * D);  // -inf states: never read
                }
                #pragma unroll
                for (int j = 0; j < GROUP; j++) add8<TI>(acc, wk[j], v[j]);
            }
        }
    }
    #pragma unroll
    for (int o = LPS; o < 32; o <<= 1) {
        #pragma unroll
        for (int i = 0; i < 8; i++) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    if (sub == 0 && mine) {
        #pragma unroll
        for (int i = 0; i < 8; i++) acc[i] *= inv;
        store8<TO>(out + row * D + col, acc);
    }
    if (lane == 0) lse[row] = l > 0.f ? m + logf(l) : -INFINITY;
}

// ATTN_TK_MERGE=v4 takes the one-state-at-a-time vector merge instead (read at each launch,
// so that one build can time and test both).
static bool merge_v8() {
    const char *e = std::getenv("ATTN_TK_MERGE");
    return !(e && std::strcmp(e, "v4") == 0);
}

template<typename TI, typename TO>
static void launch(const at::Tensor &outs, const at::Tensor &lses, at::Tensor &out, at::Tensor &lse) {
    int K = (int)outs.size(0);
    long R = outs.size(1);
    int D = (int)outs.size(2);
    if (R == 0) return;
    constexpr int ROWS = 8;
    dim3 grid((unsigned)((R + ROWS - 1) / ROWS));
    // (the vector paths need each row's column groups aligned: a view may start anywhere)
    const auto base = reinterpret_cast<uintptr_t>(outs.data_ptr());
    if (merge_v8() && D % 8 == 0 && D <= 128 && base % 16 == 0) {
        auto kern = D > 64 ? merge_v8_kernel<TI, TO, 16> : merge_v8_kernel<TI, TO, 8>;
        if constexpr (MERGE_WIDE > 0) {
            const bool few_rows = ATTN_TK_MERGE_WIDE_ROWS > 0 && R <= ATTN_TK_MERGE_WIDE_ROWS && K > 32 / (D > 64 ? 16 : 8);
            if (K >= MERGE_WIDE || few_rows) kern = D > 64 ? merge_v8_kernel<TI, TO, 16, true> : merge_v8_kernel<TI, TO, 8, true>;
        }
        kern<<<grid, ROWS * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
            reinterpret_cast<const TI *>(outs.data_ptr()), lses.data_ptr<float>(),
            reinterpret_cast<TO *>(out.data_ptr()), lse.data_ptr<float>(), K, R, D);
        return;
    }
    if (D % 4 == 0 && D <= 128 && reinterpret_cast<uintptr_t>(outs.data_ptr()) % (4 * sizeof(TI)) == 0) {
        merge_v4_kernel<TI, TO><<<grid, ROWS * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
            reinterpret_cast<const TI *>(outs.data_ptr()), lses.data_ptr<float>(),
            reinterpret_cast<TO *>(out.data_ptr()), lse.data_ptr<float>(), K, R, D);
        return;
    }
    merge_kernel<TI, TO><<<grid, ROWS * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const TI *>(outs.data_ptr()), lses.data_ptr<float>(),
        reinterpret_cast<TO *>(out.data_ptr()), lse.data_ptr<float>(), K, R, D);
}

}  // namespace attn_tk

// outs [K, R, D] (float32, bfloat16 or float16), lses float32 [K, R], both contiguous;
// out [R, D] (bfloat16, float16 or float32), lse float32 [R].
void tk_merge(at::Tensor outs, at::Tensor lses, at::Tensor out, at::Tensor lse) {
    using namespace attn_tk;
    const c10::cuda::CUDAGuard guard(outs.device());  // launch on the tensors' GPU
    TORCH_CHECK(outs.is_contiguous() && lses.is_contiguous() && out.is_contiguous() && lse.is_contiguous(),
                "tk merge: contiguous tensors expected");
    TORCH_CHECK(outs.size(2) <= 256, "tk merge: head dim at most 256");
    auto ti = outs.scalar_type(), to = out.scalar_type();
#define ATTN_TK_MERGE(TI_, TO_, ti_, to_) if (ti == ti_ && to == to_) { launch<TI_, TO_>(outs, lses, out, lse); }
    ATTN_TK_MERGE(float, __nv_bfloat16, at::kFloat, at::kBFloat16)
    else ATTN_TK_MERGE(float, __half, at::kFloat, at::kHalf)
    else ATTN_TK_MERGE(float, float, at::kFloat, at::kFloat)
    else ATTN_TK_MERGE(__nv_bfloat16, __nv_bfloat16, at::kBFloat16, at::kBFloat16)
    else ATTN_TK_MERGE(__half, __half, at::kHalf, at::kHalf)
    else TORCH_CHECK(false, "tk merge: unsupported dtypes ", ti, " -> ", to);
#undef ATTN_TK_MERGE
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}
