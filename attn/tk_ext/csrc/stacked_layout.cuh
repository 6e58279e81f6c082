// The stacked kernel's compile-time switches, CTA layout (warpgroups, register budgets, query
// slots, ring stages), its work-item fields and the arguments every item shares.
#pragma once

#include "kittens.cuh"
#include "tile_ops.cuh"

namespace attn_tk {

using namespace kittens;

// 1: row-split items run the FlashAttention-3 intra-warpgroup pipeline (QK^T of tile t+1 and
// P_t V_t in flight while the softmax of tile t+1 runs); 0: every item runs the serial loop
// (QK^T, wait, softmax, PV, wait). Kept as a fallback; kv-split (decode) items always run the
// serial loop: they are memory-bound.
#ifndef ATTN_TK_PIPELINE
#define ATTN_TK_PIPELINE 1
#endif
// 1: a kv-split item's warps that hold rows sit on different SM sub-partitions in the two
// warpgroups, and warps with no rows of the item skip the softmax (stacked.cuh: wq, live).
#ifndef ATTN_TK_SPREAD_ROWS
#define ATTN_TK_SPREAD_ROWS 1
#endif
// The serial loop (kv-split items: decode) runs softmax_step_fast (lazy rescale, per-lane
// row sums) as the pipelined loop does: 1-4 % faster than softmax_step on the spec
// workloads (H200 runs 0026 / 0028). 0: softmax_step.
#ifndef ATTN_TK_SERIAL_SOFTMAX
#define ATTN_TK_SERIAL_SOFTMAX 1
#endif
// 1: the epilogue picks its destination once per item and stores each row with straight-line
// code, with a fast reciprocal and log2 (MUFU). 0: per 16-column tile, a branch on the
// destination and a select between two kernel parameters (compiled to an indexed constant
// load), the chain of which took a decode item's epilogue ~0.9 us (bench/tk_timeline.py).
#ifndef ATTN_TK_FAST_EPILOGUE
#define ATTN_TK_FAST_EPILOGUE 1
#endif
// 1: the producer issues the first K/V tile, then waits for the CTA's first query slot (the
// query warp signals a one-shot barrier once it has landed) before it fills the rest of the
// ring, so that at the kernel's start (every CTA fetching queries and a whole ring at once)
// the queries the consumers wait for are not queued behind the ring's tiles.
// H200 runs 0060 / 0059 (before the barrier, when the query warp did not wait either):
// within 1 % (tree-3level 0.6-0.9 % faster), so off.
// 2: the producer waits for every query slot of the CTA's first unit (both of a row-split
// item's or a pair's), and the query warp gathers nothing more until they have landed, so
// that at the start only one K / V tile per CTA competes with the first queries. H200 runs
// 0114 / 0115: +0.2 % in the geometric mean (tree-3level shared_prefix +1.9 %), so off; the
// first row-split item's query wait in tree-3level stayed 3.9 us (4.2 without it), so that
// wait is not the ring fill either (logs/s17-tk-timeline-qfirst.log).
#ifndef ATTN_TK_Q_FIRST
#define ATTN_TK_Q_FIRST 0
#endif
// 1: the consumer warps gather their own 16 rows of the CTA's first unit (a row-split item or a
// pair, whose warpgroups read a slot each) with cp.async, instead of waiting for the query warp,
// and complete the slot's q_full themselves (lanes 0-7 of each of the 4 warps: its count of 32),
// so that its phases stay as the query warp counts them. Why: at a kernel's start the query
// warp took ~1.9 us to issue one 64-row slot (64 copies per lane) and the first row-split
// items waited 3.7-4.5 us for their queries (H200 timelines, logs/s18-tk-timeline-qwarp.log);
// eight warps issue 8 copies per lane each, at once. With it the first row-split items of
// tree-3level waited 1.76 us (gqa-8b 3.54, hydragen-mqa 2.71: the rest is DRAM latency at the
// start, which -DATTN_TK_Q_FIRST=2 beside it did not cut), and the spec workloads ran 0.8 %
// faster in the geometric mean in two calls (H200 runs 0118 / 0119 and 0121 / 0122: gqa-8b-long
// 1.1-3.2 %, gqa-8b 0.3-2.6 %, every other case within 1.4 %).
#ifndef ATTN_TK_SELF_Q
#define ATTN_TK_SELF_Q 1
#endif
// The query warp (gather_queries) and the consumers (stacked.cuh) each test "self-gathered":
// the unit that starts at the CTA's first item, unless it is a lone kv-split item, whose one
// slot both warpgroups read. (As a shared inline function the test changed the kernels' code.)
#ifndef ATTN_TK_STAGE_VALID
#define ATTN_TK_STAGE_VALID 1
#endif
// 1: the producer reads a tile's metadata (its valid keys, its TMA coordinate: in chunk mode a
// chunk id and that chunk's length, two dependent loads) before it waits for the tile's ring
// stage, so that their latency passes under the wait instead of after it, between the stage's
// release and its TMA issue. H200 runs 0086 / 0085: chunk up to 2.6 % faster (gqa-8b, hydragen-mqa
// most; tree-3level within 0.9 %), shared_prefix within 0.6 %, so on.
#ifndef ATTN_TK_PREFETCH
#define ATTN_TK_PREFETCH 1
#endif

// 1: a tile with fewer than 64 valid keys has its V rows past them zeroed in shared memory
// before its P V (tile_ops.cuh zero_rows_from says why), so that NaN or inf past a suffix's or a
// chunk's length never reaches the output. 0: as before session 29 (a build to measure its cost
// against, and one on which tests/test_agreement.py's past-length test must fail).
#ifndef ATTN_TK_ZERO_PAST
#define ATTN_TK_ZERO_PAST 1
#endif

// 1: a third consumer warpgroup runs the CTA's solo decode items (FLAG_SOLO) from its own ring
// while the other two run its prefix items (decode_wg.cuh says why). The plan then gives each CTA
// two item lists (cta_items has 2 entries a CTA: decode_streams.assign_streams). Only the *_dwg.cu
// units set it: one extension holds both forms of each kernel and the host picks one per plan
// (attn/tk_ext/backend.py, the ATTN_TK_DECODE_WG environment variable).
#if defined(ATTN_TK_DECODE_WG) && !defined(ATTN_TK_DWG_UNIT)
#error "ATTN_TK_DECODE_WG is set by the *_dwg.cu units only; pick the form per call with the ATTN_TK_DECODE_WG environment variable"
#endif
#ifndef ATTN_TK_DECODE_WG
#define ATTN_TK_DECODE_WG 0
#endif
constexpr int DECODE_WG = ATTN_TK_DECODE_WG;
#if ATTN_TK_DECODE_WG && defined(ATTN_TK_TRACE)
#error "ATTN_TK_TRACE builds record 12 warps a CTA (bench/tk_trace.py), not ATTN_TK_DECODE_WG's 16"
#endif
constexpr int NWG = 2;               // consumer warpgroups of the prefix items (and, without DECODE_WG, of all)
constexpr int NTHREADS = (NWG + 1 + DECODE_WG) * 128;
constexpr int DEC_ROWS = 16;         // rows of a solo decode item (the N of its swapped wgmmas)
constexpr int ITEM_INTS = 12;
// setmaxnreg budgets: the producer warps only compute addresses and issue copies (under 56 its
// unrolled cp.async loop spills at D = 64), the consumers hold o (D / 2 floats per thread), a
// float score tile (32), P (16) and the row statistics, and the pipelined loop keeps them live
// across two wgmma groups. 128 * PRODUCER + NWG * 128 * CONSUMER must fit the 168 per thread
// of the launch. The serial fallback keeps the budgets it was verified with.
#ifndef ATTN_TK_PRODUCER_REGS
#define ATTN_TK_PRODUCER_REGS (ATTN_TK_DECODE_WG ? 48 : 56)
#endif
// DECODE_WG: 512 threads leave 128 a thread; the pipelined consumers compile without spills at
// 184 (176 spills; H200 run 0141: 184 instead of 224 costs 0.3 % without the decode warpgroup),
// which leaves 512 - 2 x 184 = 144 to the producer warps and the decode warpgroup: 48 and 96
// compile without spills at D = 64 and 128 (nvcc 13.0; 56 and 88 spill 8 bytes in the decode loop).
#ifndef ATTN_TK_CONSUMER_REGS
#define ATTN_TK_CONSUMER_REGS (ATTN_TK_DECODE_WG ? 184 : ATTN_TK_PIPELINE ? 224 : 160)
#endif
#ifndef ATTN_TK_DECODE_REGS
#define ATTN_TK_DECODE_REGS 96
#endif
constexpr int PRODUCER_REGS = ATTN_TK_PRODUCER_REGS;
constexpr int CONSUMER_REGS = ATTN_TK_CONSUMER_REGS;
constexpr int DECODE_REGS = ATTN_TK_DECODE_REGS;
// ATTN_TK_MAXNREG=n: the kernel is launched with n registers per thread (__maxnreg__) instead of
// the 168 that one CTA of NTHREADS per SM allows, so that another kernel's CTA can share the
// SM's register file (an experiment: bench/tk_coresident.py).
#ifdef ATTN_TK_MAXNREG
constexpr int LAUNCH_REGS = ATTN_TK_MAXNREG;
#define ATTN_TK_KERNEL_BOUNDS __maxnreg__(ATTN_TK_MAXNREG)
#else
constexpr int LAUNCH_REGS = DECODE_WG ? 128 : 168;  // 65536 / NTHREADS, in steps of 8
#define ATTN_TK_KERNEL_BOUNDS __launch_bounds__(NTHREADS, 1)
#endif
static_assert(128 * PRODUCER_REGS + NWG * 128 * CONSUMER_REGS + DECODE_WG * 128 * DECODE_REGS <= LAUNCH_REGS * NTHREADS,
              "register budget");

// Fields of one work item (int32, ITEM_INTS per item).
enum ItemField {
    F_FLAGS = 0,      // bit 0: kv split; bit 1: direct (write the final out / lse, see DIRECT_ROWS);
                      // bit 2: pair (this kv-split item on warpgroup 0, the next on warpgroup 1);
                      // bit 4: clear next (also write lse = -inf into slot + 1 for its rows)
    F_SRC = 1,        // level mode: which K/V source (a level, or the suffix)
    F_GIDX = 2,       // level mode: group / batch index in the source; chunk mode: offset into the chunk list
    F_HEAD = 3,       // kv head
    F_SEQ0 = 4,       // first sequence of the stacked rows
    F_NROWS = 5,      // stacked rows of the whole (group, head): nseq * r
    F_ROW0 = 6,       // first stacked row of this item
    F_TILE0 = 7,      // first tile of this item
    F_TILE1 = 8,      // one past the last tile of this item
    F_KEYLEN = 9,     // level mode: keys of the source; -1 = suffix_lens[gidx]
    F_SLOT = 10,      // partial slot (kv split: slot + warpgroup)
    F_WALK = 11,      // level mode, 0 or a leaf item that walks its sequences' suffixes after its tiles:
                      // the suffix's source (bits 0-2), suffix_lens given (bit 3), the suffix capacity S (<< 4)
};
// A ring stage's word (stage_valid) for a walked suffix tile: WALK_TAG | (sequence + 1) << 16 |
// keys, the sequence counted in the item's; other tiles' words are their valid keys (< WALK_TAG).
constexpr int WALK_TAG = 1 << 30;
// F_WALK's packing (plan.py: the same): the suffix's source in the low WALK_SRC_BITS, WALK_RAGGED
// when its lengths are read from suffix_lens, its capacity from bit WALK_CAP_SHIFT up.
constexpr int WALK_SRC_BITS = 3;
constexpr int WALK_RAGGED = 8;
constexpr int WALK_CAP_SHIFT = 4;
// Bits of F_FLAGS (plan.py: the same, and FLAG_PAIRED = 8 on a pair's second item, which the
// kernel does not read). FLAG_CLEAR_NEXT marks an item writing one slot of a two-slot split
// (paired, or row-split beside kv-split blocks) whose slot + 1 no item writes: it writes that
// lse as -inf itself, so the partial lses need no -inf fill before the launch
// (plan.clear_unwritten).
// FLAG_SOLO (DECODE_WG builds) marks the items of a CTA's decode list, which the decode
// warpgroup runs whole, writing one slot (the kernel knows them by their list, not the flag).
enum ItemFlag { FLAG_KV_SPLIT = 1, FLAG_DIRECT = 2, FLAG_PAIR = 4, FLAG_CLEAR_NEXT = 16, FLAG_SOLO = 32 };

template<typename T> struct dt {};
template<> struct dt<bf16> { template<int R, int C> using st_t = st_bf<R, C>; template<int R, int C> using rt_t = rt_bf<R, C>; };
template<> struct dt<half> { template<int R, int C> using st_t = st_hf<R, C>; template<int R, int C> using rt_t = rt_hf<R, C>; };

// Query tiles: a ring of QSLOTS = QBUFS * NWG single tiles. A row-split item takes two
// consecutive slots (one per warpgroup), a kv-split item one (both warpgroups read it), so
// the query warp gathers decode items further ahead than row-split ones. Consumers copy
// their query tile into registers when an item starts and free the slot at once. QBUFS = 2
// (4 slots, and so 4 ring stages at D = 128 instead of 5) was 1-4 % faster than 1 on the
// spec workloads (H200, bench/tk_variants.sh, runs 0007 / 0008).
// ATTN_TK_QROWS=0: the query warp copies all 64 rows of a tile, zero-filled (run 0016).
#ifndef ATTN_TK_QROWS
#define ATTN_TK_QROWS 1
#endif
#ifndef ATTN_TK_QBUFS
#define ATTN_TK_QBUFS 2
#endif
constexpr int QBUFS = ATTN_TK_QBUFS;
static_assert(QBUFS == 1 || QBUFS == 2, "one or two query buffers");
// ATTN_TK_QSLOTS=n (n >= NWG): n query slots; 0: QBUFS * NWG. Default 3: the query warp gathers
// one slot less far ahead (a row-split item's second slot waits for the previous item's first
// to be read into registers), which made shared_prefix 0.4-3.4 % faster on every spec workload
// (tree-3level most) and chunk within 0.9 % (H200, runs 0110 / 0108, 0111 and 0113 / 0112: -0.5 %
// in the geometric mean each time, before and after the default). The 16 KB it frees do not
// buy a fifth stage at D = 128 within 192 KB; with ATTN_TK_SMEM_KB=216 they do, and that was
// 0.7 % slower (run 0109).
#ifndef ATTN_TK_QSLOTS
#define ATTN_TK_QSLOTS (ATTN_TK_DECODE_WG ? 2 : 3)  // DECODE_WG: the decode ring needs the bytes
#endif
constexpr int QSLOTS = ATTN_TK_QSLOTS > 0 ? ATTN_TK_QSLOTS : QBUFS * NWG;
static_assert(QSLOTS >= NWG, "a row-split item takes one query slot per consumer warpgroup");
// Shared memory of the query slots and the ring together (KB); the rest of the SM's 227 KB
// holds the barriers, the direct items' exchange buffer (8.5 KB at D = 128) and the alignment pad.
#ifndef ATTN_TK_SMEM_KB
#define ATTN_TK_SMEM_KB (ATTN_TK_DECODE_WG ? 208 : 192)  // DECODE_WG: with the decode ring and buffer
#endif
// DECODE_WG: stages of the decode warpgroup's own K ring and V ring (ring_producer.cuh:
// stream_tiles_split releases them apart). 2 and 2 (64 KB at D = 128) leave the prefix ring 3
// stages; 1 and 1, 4. H200 runs 0161 / 0162 (timeline logs/s22-tk-timeline-split-decode-ring.log):
// with 1 and 1 gqa-8b's row-split items took 90.9 us instead of 98.6, but its solo items 10.4
// instead of 9.5, and the decode lists are that kernel's longer ones: 1.1 % slower in the
// geometric mean with the decode warpgroup everywhere (gqa-8b 7 % slower, gqa-8b-long 3-5 %
// faster), and still 0.5 % with solo costs refitted to it (run 0167).
#ifdef ATTN_TK_DEC_STAGES
#error "ATTN_TK_DEC_STAGES is now ATTN_TK_DEC_KSTAGES and ATTN_TK_DEC_VSTAGES"
#endif
#ifndef ATTN_TK_DEC_KSTAGES
#define ATTN_TK_DEC_KSTAGES 2
#endif
#ifndef ATTN_TK_DEC_VSTAGES
#define ATTN_TK_DEC_VSTAGES 2
#endif
// 1: each lane of the query warp signals q_full with cp.async.mbarrier.arrive, which fires
// when its copies have landed, so the warp goes on to gather the next item at once; 0: it
// waits for its copies (cp.async.wait_all) and lane 0 arrives, one memory latency per item
// (as in H200 run 0018).
#ifndef ATTN_TK_QASYNC
#define ATTN_TK_QASYNC 1
#endif
static_assert(!ATTN_TK_SELF_Q || ATTN_TK_QASYNC, "self-gathered slots complete q_full with its count of 32");

// 1: the tile that ends a ragged suffix or a partial chunk is loaded as boxes of TAIL_BOX keys x 64
// columns, only those with keys (tail_boxes), instead of as one 64-key box: TMA reads past
// a length inside the tensor from DRAM (at most 63 keys of K and V per (sequence, kv head):
// ~12 % of a ragged suffix's bytes at S = 256), and only past the tensor's end for free. Needs
// ATTN_TK_ZERO_PAST: the rows left unloaded hold an earlier tile's keys.
#ifndef ATTN_TK_TAIL_BOXES
#define ATTN_TK_TAIL_BOXES 1
#endif
static_assert(!ATTN_TK_TAIL_BOXES || ATTN_TK_ZERO_PAST, "tail boxes leave stale V rows that ZERO_PAST clears");
constexpr int TAIL_BOX = 16;
// Boxes of a tile with `valid` keys: 0 (one whole-tile load) unless it has keys but fewer than a tile.
// Only tiles with at most half their keys: at 3 or 4 boxes the saved bytes did not pay for the
// extra copies (H200, session 29: tree-3level-ragged, whose last tiles hold 32-64 keys, 4 % slower).
__device__ inline int tail_boxes(int valid) {
    return ATTN_TK_TAIL_BOXES && valid > 0 && valid <= TILE / 2 ? (valid + TAIL_BOX - 1) / TAIL_BOX : 0;
}

template<typename T, int D> struct tiles {
    using q_tile = typename dt<T>::template st_t<TILE, D>;
    using kv_tile = typename dt<T>::template st_t<TILE, D>;
    // A box of a K/V tile: TAIL_BOX rows of one 64-column block. The tile stores its 64-column
    // blocks one after the other, each row 128 bytes (TK's st::idx), so box (j, h) lands at
    // byte h * TILE * 128 + j * TAIL_BOX * 128 of it, 1024-aligned as the 128-byte swizzle needs.
    using box_tile = typename dt<T>::template st_t<TAIL_BOX, 64>;
    // Deep rings: decode items are memory-bound and the ring must cover item switches. The
    // query slots and the ring share ATTN_TK_SMEM_KB (+ the barriers and the direct items'
    // exchange buffer, within the 227 KB of an SM): 4 stages at D = 128, 10 at D = 64.
    // DECODE_WG: the decode rings (DEC_KSTAGES K tiles, DEC_VSTAGES V tiles) and the decode
    // buffer (decode_wg.cuh dec_buf: two 16-row query tiles and P^T / the transposition, 13 KB
    // at D = 128) come first.
    static constexpr int DEC_KSTAGES = DECODE_WG ? ATTN_TK_DEC_KSTAGES : 0;
    static constexpr int DEC_VSTAGES = DECODE_WG ? ATTN_TK_DEC_VSTAGES : 0;
    static constexpr int DEC_BUF = DECODE_WG ? (2 * (int)sizeof(typename dt<T>::template st_t<DEC_ROWS, D>) +
                                                (int)(DEC_ROWS * 68 * 4) + 1023) / 1024 * 1024 : 0;
    static constexpr int STAGES = (ATTN_TK_SMEM_KB * 1024 - (int)sizeof(q_tile) * QSLOTS - DEC_BUF -
                                   (int)sizeof(kv_tile) * (DEC_KSTAGES + DEC_VSTAGES)) / (2 * (int)sizeof(kv_tile));
    static constexpr size_t smem = sizeof(q_tile) * QSLOTS + sizeof(kv_tile) * (2 * STAGES + DEC_KSTAGES + DEC_VSTAGES) +
                                   DEC_BUF + 2048;
};

template<typename T, int D>
__device__ inline int tile_bytes(int boxes) {
    return boxes ? boxes * TAIL_BOX * D * (int)sizeof(T) : (int)sizeof(typename tiles<T, D>::kv_tile);
}
template<typename T, int D>
__device__ inline typename tiles<T, D>::box_tile &box_at(typename tiles<T, D>::kv_tile &t, int j, int h) {
    static_assert(sizeof(typename tiles<T, D>::box_tile) == TAIL_BOX * 128 && D * sizeof(T) % 128 == 0, "128-byte rows");
    return *reinterpret_cast<typename tiles<T, D>::box_tile *>(reinterpret_cast<char *>(&t) + h * TILE * 128 + j * TAIL_BOX * 128);
}

// Each CTA's item range and first unit (an item, or a pair's two items), in the kernel's
// parameters (schedule.cta_heads, copied at each launch), so that a CTA starts its first
// unit without reading cta_items and then the item from memory. H200 runs 0106 / 0105 and
// 0107 / 0108: the table reads (ATTN_TK_HEADS=0) 0.6 % slower in the geometric mean; the
// first row-split item's query wait (3.9 us in tree-3level) did not shrink with heads, so that
// wait is not this chain. CTAs past HEAD_CTAS, or a launch without heads (nheads = 0), read
// the tables. The decode-warpgroup form is passed none (its CTAs run two item lists): it keeps one
// row, so that its launches do not copy ~17 KB of unread parameters.
constexpr int HEAD_CTAS = DECODE_WG ? 1 : 160;
struct cta_heads {
    int range[HEAD_CTAS][2];              // [cta_items[c], cta_items[c + 1])
    int item[HEAD_CTAS][2][ITEM_INTS];    // items cta_items[c] and cta_items[c] + 1
};

// What every item needs besides its K/V source.
struct common_args {
    const int *items;          // [num_items, ITEM_INTS]
    const int *cta_items;      // [num_ctas + 1]: CTA c runs items [cta_items[c], cta_items[c + 1])
    const void *q;             // [B, Hq, D]
    long q_sb, q_sh;           // strides of q (elements); stride 1 in D
    int hq, r;                 // query heads, query heads per kv head
    int rows_total;            // B * Hq: rows of one partial slot
    float scale_log2;          // scale * log2(e)
    void *part_out;            // [nslot, rows_total, D]: float32, or T when half_parts
    float *part_lse;           // [nslot, rows_total]
    int half_parts;            // partial outs in T (half the bytes written and merged)
    void *out;                 // direct items: [rows_total, D] in T
    float *lse;                // direct items: [rows_total]
    int sched;                 // consumer schedule of row-split items: a Sched (sched_mode())
    int *trace;                // ATTN_TK_TRACE builds: device [ctas, NTHREADS / 32, 4]; else unused
    unsigned long long *timeline;  // ATTN_TK_TIMELINE builds: device [num_items, NWG, TL_FIELDS]; else unused
    // The unit queue (unit_queue.cuh), or queue == nullptr: each CTA runs [cta_items[c], cta_items[c + 1]).
    unsigned long long *queue;  // device [2]: claims (front CTAs count in the low 32 bits, the others in the
                                // high 32) and CTAs done claiming; zero at a launch, and left zero by it
    const int *units;          // [nunits]: the first item row of each unit, in the order they are handed out
    int nunits;                // units in the queue (>= the grid: each CTA's first unit is units[c] or from the back)
    int front;                 // CTAs [0, front) take units from the front (largest first), the others from the back
    int nheads;                // CTAs [0, nheads) have their range and first unit in heads
    cta_heads heads;
};

// The unit queue of a launch (common_args' fields of the same names), as the bindings pass it.
struct queue_spec {
    unsigned long long *queue = nullptr;
    const int *units = nullptr;
    int nunits = 0, front = 0;
};
inline void set_queue(common_args &a, const queue_spec &q) {
    a.queue = q.queue;
    a.units = q.units;
    a.nunits = q.nunits;
    a.front = q.front;
}

// heads: int32 [n, HEAD_INTS] on the host (range, then the two items' fields), at most
// HEAD_CTAS rows used.
constexpr int HEAD_INTS = 2 + 2 * ITEM_INTS;
inline void fill_heads(common_args &a, const int *heads, long n) {
    a.nheads = (int)(n < HEAD_CTAS ? n : HEAD_CTAS);
    for (int c = 0; c < a.nheads; c++) {
        const int *h = heads + (long)c * HEAD_INTS;
        a.heads.range[c][0] = h[0];
        a.heads.range[c][1] = h[1];
        for (int k = 0; k < 2 * ITEM_INTS; k++) a.heads.item[c][k / ITEM_INTS][k % ITEM_INTS] = h[2 + k];
    }
}

// This CTA's first unit in the parameters (a generic pointer into the __grid_constant__
// arguments), or nullptr; item i's fields (the head for i == first).
__device__ inline const int *cta_head(const common_args &a) {
    return (int)blockIdx.x < a.nheads ? &a.heads.item[blockIdx.x][0][0] : nullptr;
}
__device__ inline const int *item_at(const common_args &a, const int *head, int i, int first) {
    return head && i == first ? head : a.items + (long)i * ITEM_INTS;
}

}  // namespace attn_tk
