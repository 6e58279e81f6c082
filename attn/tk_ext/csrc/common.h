// Torch-side includes and the entry points each .cu file defines (registered in bindings.cpp).
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Optional.h>
#include <vector>

// The outputs of direct items (stacked.cuh): out [rows, D] in q's dtype, lse float [rows].
inline void check_direct_outputs(const at::Tensor &q, const at::Tensor &out, const at::Tensor &lse) {
    TORCH_CHECK(out.scalar_type() == q.scalar_type() && out.is_contiguous() && lse.is_contiguous(),
                "tk: out must be contiguous in q's dtype");
}

// Partial outs [nslot, rows, D]: float32, or q's dtype (returns 1: the kernel stores them in T).
inline int check_partials(const at::Tensor &q, const at::Tensor &part_out) {
    TORCH_CHECK(part_out.is_contiguous() && (part_out.scalar_type() == at::kFloat || part_out.scalar_type() == q.scalar_type()),
                "tk: partial outs must be contiguous float32 or q's dtype");
    return part_out.scalar_type() == q.scalar_type() ? 1 : 0;
}

void tk_shared_prefix_partials(at::Tensor q, std::vector<at::Tensor> ks, std::vector<at::Tensor> vs,
                               c10::optional<at::Tensor> lens, at::Tensor items, at::Tensor cta_items, double scale,
                               at::Tensor part_out, at::Tensor part_lse, at::Tensor out, at::Tensor lse,
                               at::Tensor heads);
void tk_chunk_partials(at::Tensor q, at::Tensor k_chunks, at::Tensor v_chunks, at::Tensor chunk_list,
                       at::Tensor chunk_lens, bool tails, at::Tensor items, at::Tensor cta_items, double scale,
                       at::Tensor part_out, at::Tensor part_lse, at::Tensor out, at::Tensor lse,
                       at::Tensor heads);
void tk_merge(at::Tensor outs, at::Tensor lses, at::Tensor out, at::Tensor lse);
// The same entry points for two-list plans (the *_dwg.cu units: the kernels with the decode warpgroup).
void tk_shared_prefix_partials_dwg(at::Tensor q, std::vector<at::Tensor> ks, std::vector<at::Tensor> vs,
                                   c10::optional<at::Tensor> lens, at::Tensor items, at::Tensor cta_items, double scale,
                                   at::Tensor part_out, at::Tensor part_lse, at::Tensor out, at::Tensor lse,
                                   at::Tensor heads);
void tk_chunk_partials_dwg(at::Tensor q, at::Tensor k_chunks, at::Tensor v_chunks, at::Tensor chunk_list,
                           at::Tensor chunk_lens, bool tails, at::Tensor items, at::Tensor cta_items, double scale,
                           at::Tensor part_out, at::Tensor part_lse, at::Tensor out, at::Tensor lse,
                           at::Tensor heads);
