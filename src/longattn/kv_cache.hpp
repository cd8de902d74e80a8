#pragma once
// Decoding over a sharded, paged KV cache.
//
// After a long prefill, each generation step attends a few new query tokens per sequence to the whole
// cache. Instead of moving the cache past the queries (a ring), every rank keeps its part of the cache,
// attends the new queries to its own pages, and one collective combines the partial (O, LSE) of all
// ranks, exactly (the merge of kernels' partials, kernels/attention.hpp).
//
// The cache holds `batch` sequences of up to `capacity` positions each, in pages of `page_tokens`
// slots (a block table per sequence, as PagedAttention), on every rank of a communicator:
//   - prefill: each rank writes the K/V rows it already holds, at their global positions (any layout);
//     no transfer;
//   - append: a decode step's new tokens go to the rank that owns their position: round_robin (the
//     default) deals out the pages of a sequence in turn, starting at rank seq % P, so the shards stay
//     even as the sequences grow; layout places position t where the layout over the capacity puts it.
// Capacity and pages are set up front: a position beyond the capacity, or a rank out of pages, is an
// Error (every rank throws in a decode step), never an overwrite.
//
// Worked example: page_tokens 16, 2 ranks, round_robin: sequence 0's positions 0-15 go to rank 0, 16-31
// to rank 1, 32-47 to rank 0; sequence 1's 0-15 to rank 1.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "longattn/dtype.hpp"
#include "longattn/layout.hpp"
#include "longattn/pattern.hpp"
#include "longattn/tensor.hpp"

namespace longattn {

namespace comm {
class Communicator;
}

enum class KvPlacement { round_robin, layout };
KvPlacement parse_kv_placement(const std::string& name);  // throws Error naming "kv-placement"
const char* kv_placement_name(KvPlacement p);

struct KvCacheOptions {
    std::int64_t batch = 1;         // sequences
    std::int64_t capacity = 0;      // positions [0, capacity) per sequence
    std::int64_t kv_heads = 1;
    std::int64_t head_dim = 64;
    DType dtype = DType::bf16;      // storage of the pages
    std::int64_t page_tokens = 64;  // slots per page: a positive multiple of 16
    KvPlacement placement = KvPlacement::round_robin;
    LayoutKind layout = LayoutKind::zigzag;  // placement = layout: the layout over the capacity
    // Pages on each rank; 0: batch * (ceil(capacity / (P * page_tokens)) + 2), enough for an even
    // share of every sequence at full capacity (prefill rows in any balanced layout included).
    std::int64_t pages = 0;
};

enum class DecodeCombine { allgather, allreduce };
DecodeCombine parse_decode_combine(const std::string& name);  // throws Error naming "combine"
const char* decode_combine_name(DecodeCombine c);

struct DecodeOptions {
    // allgather: each rank's partial (O, LSE) to every rank, merged in rank order (one round, the
    // same bits on every rank); allreduce: a max of the LSEs, then a sum of the rescaled partials.
    DecodeCombine combine = DecodeCombine::allgather;
    int threads = 0;  // kernel threads (0: all)
};

struct DecodeStats {
    double total_s = 0, append_s = 0, kernel_s = 0, combine_s = 0;
    std::uint64_t bytes_sent = 0;      // this rank's payload into the combine's collectives
    std::uint64_t bytes_received = 0;  // what the combine hands this rank
    // This rank's (page, kv head) blocks the kernel read, and those the pattern left out unread.
    std::int64_t blocks_read = 0, blocks_skipped = 0;
};

// One decode step of every sequence of the cache: T new tokens each.
struct DecodeArgs {
    TensorView q;     // [B, T, Hq, D] (B = the cache's batch), the same on every rank
    // [B, T, Hkv, D], the same on every rank: appended at positions length(b) .. length(b) + T - 1
    // before the queries attend (each rank keeps the rows it owns). Unset (null data): nothing is
    // appended and the queries sit at the last T positions of each sequence.
    TensorView k, v;
    const Pattern* pattern = nullptr;   // causal for new tokens attending the past (and each other)
    std::int64_t head_offset = 0;       // global index of query head 0 (ALiBi)
    float* o = nullptr;                 // [B, T, Hq, D] fp32 contiguous, on every rank
    float* lse = nullptr;               // [B, Hq, T]
};

class KvCache {
public:
    // comm null: one process holding everything. Not collective.
    KvCache(comm::Communicator* comm, const KvCacheOptions& opt);
    ~KvCache();
    KvCache(const KvCache&) = delete;
    KvCache& operator=(const KvCache&) = delete;

    const KvCacheOptions& options() const;
    int rank() const;
    int ranks() const;
    // The rank that an append of position pos of sequence seq writes to.
    int owner(std::int64_t seq, std::int64_t pos) const;
    // Tokens in sequence seq, the same on every rank (after sync_lengths for written rows).
    std::int64_t length(std::int64_t seq) const;

    // Prefill: this rank's rows of sequence seq at global positions pos[0, n) (increasing, above any
    // row this rank already holds of seq): rows [0, n) of batch entry `entry` of k and v
    // ([B, S, Hkv, D] views, any storage type, converted to the cache's). Local, no transfer.
    void write(std::int64_t seq, const std::int64_t* pos, std::int64_t n, const TensorView& k, const TensorView& v,
               std::int64_t entry = 0);
    // Collective: each sequence's length becomes the largest position any rank wrote, plus one.
    void sync_lengths();
    // Grows sequence seq to n tokens from the counter-based generator (longattn/synth.hpp, K and V of
    // batch index seq), each position on its owner. Local; every rank calls it alike.
    void fill_synth(std::uint64_t seed, std::int64_t seq, std::int64_t n, int threads = 0);

    std::int64_t pages_used() const;   // on this rank
    std::int64_t pages_total() const;  // on this rank
    std::int64_t tokens_held() const;  // slots filled on this rank
    std::uint64_t bytes() const;       // the pages' memory on this rank (K, V and positions)
    // What bytes() will be for a cache of these options on `ranks` ranks, before it is made.
    static std::uint64_t bytes_for(const KvCacheOptions& opt, int ranks);

    // Collective: every rank's pages copied to `root`, which gets a one-process cache of the whole
    // batch (the other ranks get null). The baseline that decodes on one rank.
    std::unique_ptr<KvCache> gathered(int root) const;

    struct Impl;
    Impl& impl() { return *impl_; }

private:
    std::unique_ptr<Impl> impl_;
};

// Collective over the cache's communicator: appends (when args.k is set), attends each rank's pages,
// combines. o and lse are the attention of the new queries over each whole sequence, on every rank.
// Bad arguments (on any rank, or shapes that differ between ranks), a position beyond the capacity or a
// rank out of pages throw on every rank, and leave the cache as it was.
DecodeStats decode_step(KvCache& cache, const DecodeArgs& args, const DecodeOptions& opt = {});

// Collective, in place of a decode_step on a rank whose caller could not make the step's arguments
// (a binding's conversion failed): every rank's decode_step throws, this rank's with `why`.
[[noreturn]] void decode_refuse(KvCache& cache, const std::string& why);

// The pass-Q baseline (no append): query heads are dealt to the ranks by kv head; each rank's heads
// travel round the ring with their running (O, LSE), each rank adding its pages, and come home. o and
// lse are written for this rank's heads only (`heads_begin`, `heads_end` give them).
DecodeStats decode_pass_q(KvCache& cache, const DecodeArgs& args, const DecodeOptions& opt,
                          std::int64_t* heads_begin = nullptr, std::int64_t* heads_end = nullptr);

}  // namespace longattn
