#pragma once
// The inside of a longattn::Plan (longattn/distributed.hpp): what the strategies compute once per
// (communicator, positions, pattern, shapes, options) and read on every call.
#include <memory>
#include <optional>
#include <vector>

#include "strategies/common.hpp"
#include "strategies/mesh.hpp"

namespace longattn::dist {

// The ring's schedule over one communicator: which shards travel how far, and which of their rows.
struct RingPlan {
    int P, r, next, prev;
    Shards sh;
    std::vector<std::vector<char>> need;  // need[o][d]: rank d's queries may attend shard o
    // Last ring distance at which some rank needs shard o (-1: nobody, not even its owner).
    std::vector<int> last;
    // Local rows [sent_lo, sent_hi) of each shard that travel: those other ranks may attend.
    std::vector<std::int64_t> sent_lo, sent_hi;

    // Collective over comm: S local rows at positions pos.
    RingPlan(comm::Communicator& comm, const std::int64_t* pos, std::int64_t S, const Pattern& pat);
    // From every rank's shard, as rank `rank` (the cost model's replay, longattn/cost_model.hpp).
    RingPlan(Shards shards, int rank, const Pattern& pat);
    int origin(int t) const { return (r - t + P) % P; }  // owner of the shard held at step t
    // The shard held at step t is passed on after it.
    bool forwarded(int o, int t) const { return t < last[static_cast<std::size_t>(o)]; }
    bool needs(int o) const { return need[static_cast<std::size_t>(o)][static_cast<std::size_t>(r)] != 0; }
    std::int64_t sent_rows(int o) const { return sent_hi[static_cast<std::size_t>(o)] - sent_lo[static_cast<std::size_t>(o)]; }
    // Global positions of the rows of shard o that travel.
    const std::int64_t* sent_pos(int o) const { return sh.pos_of(o) + sent_lo[static_cast<std::size_t>(o)]; }
    std::int64_t max_sent() const;
};

// Ulysses over one communicator: the shard table, each rank's rows of the gathered sequence, and the
// split of the heads. Heads need not divide the rank count (shards of heads differ by one, and a rank
// may get none); with GQA/MQA a kv head goes to every rank holding one of its query heads.
// The kv heads each rank's query heads q[j] read, G query heads per kv head (none for no query heads).
std::vector<Range> kv_heads_of(const std::vector<Range>& q, std::int64_t G);

struct UlyssesPlan {
    Shards sh;
    std::vector<Range> rows;   // per rank: its rows of the gathered sequence
    std::vector<Range> q, kv;  // per rank: query heads, and the kv heads they read
    std::int64_t G;            // query heads per kv head

    // Collective over comm.
    UlyssesPlan(comm::Communicator& comm, const std::int64_t* pos, std::int64_t S, std::int64_t hq, std::int64_t hkv);
};

struct PlanState {
    PlanState(comm::Communicator& comm, const std::int64_t* pos, const Pattern& pattern, const PlanShape& shape,
              const DistOptions& opt);

    DistOptions opt;
    PlanShape shape;
    Pattern pattern;
    std::vector<std::int64_t> pos;
    Mesh mesh;                           // hybrid: the Ulysses x ring grid, split once
    std::optional<UlyssesPlan> ulysses;  // ulysses; hybrid (over mesh.ulysses)
    // ring; hybrid: the ring over mesh.ring of the Ulysses group's gathered sequence
    std::optional<RingPlan> ring;
    std::optional<Shards> shards;  // allgather
    Workspace workspace;
    std::uint64_t build_bytes = 0;  // sent while building (the shard tables)
};

// Plan::memory_estimate on the host (strategies/memory.cpp).
MemoryEstimate working_memory(const PlanState& s, bool backward, DType storage);

// The strategies' scratch at its peak in one call (what DistStats::scratch_peak_bytes measures), from
// what the plans hold; the cost model calls them with its own replay of the plans. d: the call at the
// rank, S its query rows.
struct Dims {
    std::int64_t B, S, Hq, Hkv, D;
};
// The ring: M rows at most of a shard travel, own_sent of this rank's; o_fp32: O is stored in fp32 (no
// accumulator copy); chunks: kernel calls per step.
std::uint64_t ring_scratch(const Dims& d, std::int64_t M, std::int64_t own_sent, std::size_t es, bool o_fp32, int chunks,
                           bool backward);
// Ulysses over a group holding N rows: this rank's ql query and kl kv heads, kv_sent the kv heads of all
// members together; inner: the attention inside's scratch (the hybrid's ring).
std::uint64_t ulysses_scratch(const Dims& d, std::int64_t N, std::int64_t ql, std::int64_t kl, std::int64_t kv_sent,
                              std::size_t es, bool backward, std::uint64_t inner);
// The all-gather of N rows over P ranks, chunk kv heads at a time (0: all).
std::uint64_t allgather_scratch(const Dims& d, std::int64_t N, int P, std::size_t es, std::int64_t chunk, bool backward);

}  // namespace longattn::dist
