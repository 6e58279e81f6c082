// shared_prefix.cu's kernel with the decode warpgroup (decode_wg.cuh): the same sources compiled
// a second time, in their own namespace and under their own entry name, so that one extension
// holds both forms and the host picks per plan (attn/tk_ext/backend.py). Trace builds record 12
// warps a CTA, not this form's 16: there the entry point only refuses.
#ifdef ATTN_TK_TRACE
#include "common.h"
void tk_shared_prefix_partials_dwg(at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, c10::optional<at::Tensor>,
                                   at::Tensor, at::Tensor, double, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                   c10::optional<at::Tensor>, c10::optional<at::Tensor>, int64_t, bool) {
    TORCH_CHECK(false, "tk: ATTN_TK_TRACE builds have no decode-warpgroup kernels (set ATTN_TK_DECODE_WG=0)");
}
#else
#define ATTN_TK_DWG_UNIT 1
#define ATTN_TK_DECODE_WG 1
#define attn_tk attn_tk_dwg
#define tk_shared_prefix_partials tk_shared_prefix_partials_dwg
#include "shared_prefix.cu"
#endif
