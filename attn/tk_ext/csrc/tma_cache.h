// The global layouts (and so the TMA descriptors) of the tensors a launch reads, reused across
// launches. A gl's descriptors (cuTensorMapEncodeTiled) are a function of its type (dtype, box,
// swizzle), the base address and the four sizes only, never of the data: a gl built earlier for
// the same address and sizes is the one a new build would make, so a hit cannot be stale, even
// after the memory was freed and reallocated. A shared_prefix launch encodes 14 descriptors
// (six level slots of K and V, the suffix's boxes), a chunk launch 4, and a decode loop passes
// the same KV cache every step.
//
// ATTN_TK_GL_CACHE=0 builds every gl at every launch, as before (for A/B runs of host time).
#pragma once
#include <array>
#include <mutex>
#include <optional>

#ifndef ATTN_TK_GL_CACHE
#define ATTN_TK_GL_CACHE 1
#endif

namespace attn_tk_host {

// Enough for a shared_prefix call's 12 distinct K/V tensors of one gl type and a few calls more.
constexpr int GL_CACHE_SLOTS = 32;

template<typename GL> class gl_cache {
    struct entry {
        const void *ptr = nullptr;
        std::array<unsigned, 4> sizes{};
        std::optional<GL> gl;
    };
    std::mutex mutex_;  // two host threads may launch at once (one per GPU)
    std::array<entry, GL_CACHE_SLOTS> slots_;
    int next_ = 0;  // the slot the next miss replaces: oldest first

  public:
    template<typename T> GL get(T *ptr, unsigned b, unsigned d, unsigned r, unsigned c) {
        const std::array<unsigned, 4> sizes{b, d, r, c};
        std::lock_guard<std::mutex> lock(mutex_);
        for (const entry &e : slots_)
            if (e.gl && e.ptr == ptr && e.sizes == sizes) return *e.gl;
        entry &e = slots_[next_];
        next_ = (next_ + 1) % GL_CACHE_SLOTS;
        e.gl.reset();  // a throwing encode leaves the slot empty, not stale
        e.gl.emplace(ptr, b, d, r, c);
        e.ptr = ptr;
        e.sizes = sizes;
        return *e.gl;
    }
};

// The gl of type GL over a contiguous [b, d, r, c] tensor at ptr.
template<typename GL, typename T> GL make_gl(T *ptr, unsigned b, unsigned d, unsigned r, unsigned c) {
#if ATTN_TK_GL_CACHE
    static gl_cache<GL> cache;
    return cache.get(ptr, b, d, r, c);
#else
    return GL(ptr, b, d, r, c);
#endif
}

}  // namespace attn_tk_host
