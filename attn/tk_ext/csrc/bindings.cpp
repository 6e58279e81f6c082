// Python bindings of the tk extension: one registration for the entry points of every .cu file.
#include <torch/extension.h>
#include "common.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("shared_prefix_partials", &tk_shared_prefix_partials,
          "partial states of shared_prefix_attention work items (prefix + suffix phases, one launch)");
    m.def("chunk_partials", &tk_chunk_partials,
          "partial states of chunk_attention work items (chunk-first + sequence-first phases, one launch)");
    m.def("merge", &tk_merge, "LSE merge of partial states [K, R, D] -> [R, D]");
    m.def("decode_wg", &tk_decode_wg, "whether the kernels were built with the decode warpgroup (two item lists a CTA)");
}
