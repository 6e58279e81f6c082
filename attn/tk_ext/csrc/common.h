// Torch-side includes and the entry points each .cu file defines (registered in bindings.cpp).
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Optional.h>
#include <vector>

// 1: programmatic dependent launch of the merge after the stacked kernel (Hopper): every
// stacked CTA signals at its start (griddepcontrol.launch_dependents), so the merge grid is
// launched while the stacked kernel runs and its blocks take SMs as the stacked CTAs exit (the
// CTAs end up to ~9 us apart, H200 timelines); each merge block waits (griddepcontrol.wait) for
// the whole stacked grid and its writes before it reads a partial state. Not measured yet.
#ifndef ATTN_TK_PDL
#define ATTN_TK_PDL 0
#endif
#ifndef ATTN_TK_FUSED_MERGE
#define ATTN_TK_FUSED_MERGE 0  // stacked_layout.cuh
#endif

// merge_count: int32 [rows] counters, zero, for a build with ATTN_TK_FUSED_MERGE (the items
// merge every row themselves); nullptr otherwise. Returns the pointer.
inline int *check_merge_count(const c10::optional<at::Tensor> &mc, const at::Tensor &part_lse) {
    if (!mc.has_value()) return nullptr;
    TORCH_CHECK(ATTN_TK_FUSED_MERGE, "tk: merge counters given to a build without ATTN_TK_FUSED_MERGE");
    TORCH_CHECK(mc->scalar_type() == at::kInt && mc->is_contiguous() && part_lse.dim() == 2 &&
                mc->numel() >= part_lse.size(1), "tk: merge counters must be int32 [rows]");
    return mc->data_ptr<int>();
}

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
                               c10::optional<at::Tensor> merge_count);
void tk_chunk_partials(at::Tensor q, at::Tensor k_chunks, at::Tensor v_chunks, at::Tensor chunk_list,
                       at::Tensor chunk_lens, at::Tensor items, at::Tensor cta_items, double scale,
                       at::Tensor part_out, at::Tensor part_lse, at::Tensor out, at::Tensor lse,
                       c10::optional<at::Tensor> merge_count);
void tk_merge(at::Tensor outs, at::Tensor lses, at::Tensor out, at::Tensor lse);
bool tk_fused_merge_built();  // in a .cu file: the nvcc flags (ATTN_TK_NVCC_FLAGS) reach only those
