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

// The unit queue's tensors (unit_queue.cuh), or neither: counter int64 [2] and units int32 [nunits]
// on q's device, front in [0, num_ctas]. Returns the queue_spec's fields through the pointers.
inline void check_queue(const at::Tensor &q, const c10::optional<at::Tensor> &counter, const c10::optional<at::Tensor> &units,
                        int64_t front, int64_t num_ctas, unsigned long long **qp, const int **up, int *nunits) {
    *qp = nullptr;
    *up = nullptr;
    *nunits = 0;
    TORCH_CHECK(counter.has_value() == units.has_value(), "tk: the unit queue needs both its counter and its units");
    if (!counter.has_value()) return;
    const at::Tensor &c = *counter, &u = *units;
    TORCH_CHECK(c.scalar_type() == at::kLong && c.numel() == 2 && c.is_contiguous() && c.device() == q.device(),
                "tk: the unit queue's counter must be int64 [2] on q's device");
    TORCH_CHECK(u.scalar_type() == at::kInt && u.dim() == 1 && u.is_contiguous() && u.device() == q.device(),
                "tk: the unit queue's units must be int32 [n] on q's device");
    TORCH_CHECK(u.numel() >= num_ctas && front >= 0 && front <= num_ctas,
                "tk: the unit queue needs a unit per CTA and 0 <= front <= num_ctas");
    *qp = reinterpret_cast<unsigned long long *>(c.data_ptr<int64_t>());
    *up = u.data_ptr<int>();
    *nunits = (int)u.numel();
}

void tk_shared_prefix_partials(at::Tensor q, std::vector<at::Tensor> ks, std::vector<at::Tensor> vs,
                               c10::optional<at::Tensor> lens, at::Tensor items, at::Tensor cta_items, double scale,
                               at::Tensor part_out, at::Tensor part_lse, at::Tensor out, at::Tensor lse,
                               at::Tensor heads, c10::optional<at::Tensor> counter, c10::optional<at::Tensor> units,
                               int64_t front, bool walk);
void tk_chunk_partials(at::Tensor q, at::Tensor k_chunks, at::Tensor v_chunks, at::Tensor chunk_list,
                       at::Tensor chunk_lens, bool tails, at::Tensor items, at::Tensor cta_items, double scale,
                       at::Tensor part_out, at::Tensor part_lse, at::Tensor out, at::Tensor lse,
                       at::Tensor heads, c10::optional<at::Tensor> counter, c10::optional<at::Tensor> units,
                       int64_t front);
void tk_merge(at::Tensor outs, at::Tensor lses, at::Tensor out, at::Tensor lse);
// The same entry points for two-list plans (the *_dwg.cu units: the kernels with the decode warpgroup).
void tk_shared_prefix_partials_dwg(at::Tensor q, std::vector<at::Tensor> ks, std::vector<at::Tensor> vs,
                                   c10::optional<at::Tensor> lens, at::Tensor items, at::Tensor cta_items, double scale,
                                   at::Tensor part_out, at::Tensor part_lse, at::Tensor out, at::Tensor lse,
                                   at::Tensor heads, c10::optional<at::Tensor> counter, c10::optional<at::Tensor> units,
                                   int64_t front, bool walk);
void tk_chunk_partials_dwg(at::Tensor q, at::Tensor k_chunks, at::Tensor v_chunks, at::Tensor chunk_list,
                           at::Tensor chunk_lens, bool tails, at::Tensor items, at::Tensor cta_items, double scale,
                           at::Tensor part_out, at::Tensor part_lse, at::Tensor out, at::Tensor lse,
                           at::Tensor heads, c10::optional<at::Tensor> counter, c10::optional<at::Tensor> units,
                           int64_t front);
