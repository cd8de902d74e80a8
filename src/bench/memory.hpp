#pragma once
// Refusing a job that cannot fit, before it allocates: what each rank will hold at its peak, against
// what its node can give (MemAvailable and the cgroup's limit, shared by the ranks on the node, the
// ranks that report the same host name) and --max-memory per rank.
#include <cstdint>
#include <string>

#include "bench/bench.hpp"

namespace longattn::comm {
class Communicator;
}

namespace longattn::bench {

// Bytes one rank holds at its peak.
struct MemoryNeed {
    double shards = 0;   // its rows of Q, K, V, O, LSE (and dO, dQ, dK, dV): the bench's tensors
    double tables = 0;   // positions and the plan's tables
    double working = 0;  // the strategy's scratch at its peak (Plan::memory_estimate)
    double kernel = 0;   // the kernels' own buffers
    double check = 0;    // the fp64 check's gathered rows (after the timed runs)
    double run() const { return shards + tables + working + kernel; }  // what the timed runs hold
    double total() const { return run() + check; }
    std::string describe() const;
};

// The bench's tensors and positions of a rank with S of the N rows of a P-rank job, and the check's
// memory; tables: what holds before any plan is built (the plan's own replace them later).
MemoryNeed tensor_memory(const Job& job, std::int64_t N, std::int64_t S, int P);

// What this node can give now: min(MemAvailable, the cgroup's limit less its usage); `from` says
// which applied.
double node_available_bytes(std::string* from = nullptr);

// Collective (comm null: one process). Throws AgreedError, alike on every rank, naming the sizes,
// each need and what would fit, if the ranks of some node together need more than it can give or a
// rank needs more than --max-memory.
void refuse_what_cannot_fit(const Job& job, comm::Communicator* comm, std::int64_t N, const MemoryNeed& mine);

}  // namespace longattn::bench
