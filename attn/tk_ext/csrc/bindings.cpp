// Python bindings of the tk extension: one registration for the entry points of every .cu file.
#include <torch/extension.h>
#include "common.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("shared_prefix_partials", &tk_shared_prefix_partials,
          "partial states of shared_prefix_attention work items (prefix + suffix phases, one launch)");
    m.def("chunk_partials", &tk_chunk_partials,
          "partial states of chunk_attention work items (chunk-first + sequence-first phases, one launch)");
    m.def("merge", &tk_merge, "LSE merge of partial states [K, R, D] -> [R, D]");
    m.def("shared_prefix_partials_dwg", &tk_shared_prefix_partials_dwg,
          "shared_prefix_partials with the decode warpgroup (two item lists a CTA: attn/tk_ext/decode_streams.py)");
    m.def("chunk_partials_dwg", &tk_chunk_partials_dwg,
          "chunk_partials with the decode warpgroup (two item lists a CTA)");
}
