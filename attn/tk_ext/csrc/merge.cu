// LSE merge of partial attention states: outs [K, R, D] (float32 or half-precision partials,
// or the user's dtype for merge_states), lses float32 [K, R] natural log -> out [R, D], lse [R].
// States with lse = -inf carry no keys and are never read (their out may be garbage), so
// partial buffers need only their lse initialised. A row with no key gets out = 0, lse = -inf.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
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
        float s = k0 + lane < K ? lses[(long)(k0 + lane) * R + row] : -INFINITY;
        float mk = s;
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) mk = fmaxf(mk, __shfl_xor_sync(0xffffffffu, mk, o));
        if (mk == -INFINITY) continue;
        float m_new = fmaxf(m, mk);
        float rescale = m == -INFINITY ? 0.f : __expf(m - m_new);
        l *= rescale;
        #pragma unroll
        for (int i = 0; i < 8; i++) acc[i] *= rescale;
        m = m_new;
        float w = s == -INFINITY ? 0.f : __expf(s - m);
        float ws = w;
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) ws += __shfl_xor_sync(0xffffffffu, ws, o);
        l += ws;
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
        float s = k0 + lane < K ? lses[(long)(k0 + lane) * R + row] : -INFINITY;
        float mk = s;
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) mk = fmaxf(mk, __shfl_xor_sync(0xffffffffu, mk, o));
        if (mk == -INFINITY) continue;
        float m_new = fmaxf(m, mk);
        float rescale = m == -INFINITY ? 0.f : __expf(m - m_new);
        l *= rescale;
        acc.x *= rescale; acc.y *= rescale; acc.z *= rescale; acc.w *= rescale;
        m = m_new;
        float w = s == -INFINITY ? 0.f : __expf(s - m);
        float ws = w;
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) ws += __shfl_xor_sync(0xffffffffu, ws, o);
        l += ws;
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

template<typename TI, typename TO>
static void launch(const at::Tensor &outs, const at::Tensor &lses, at::Tensor &out, at::Tensor &lse) {
    int K = (int)outs.size(0);
    long R = outs.size(1);
    int D = (int)outs.size(2);
    if (R == 0) return;
    constexpr int ROWS = 8;
    dim3 grid((unsigned)((R + ROWS - 1) / ROWS));
    // (the vector path needs each row's 4-column groups aligned: a view may start anywhere)
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
