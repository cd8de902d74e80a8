#pragma once
// The cost model, exact part: what one distributed call sends and computes on each rank, from the
// strategies' own schedules (the ring's plan of which shards travel how far and which of their rows,
// Ulysses' split of the heads, the all-gather's shards), without a communicator. So a job can be sized
// for any rank count before it runs, and every run can check that it moved what the model says.
//
// Bytes are what each rank hands to point-to-point sends and all-to-alls (the own part of an
// all-to-all is a local copy, not counted), as DistStats::bytes_sent counts them for a call through a
// kept Plan; collectives of a few words (agreements, all-reduces) are not counted.
//
// Worked example: 2 ranks, contiguous, causal, 1 kv head of dim D, fp32, 1 sequence of N tokens. Rank 0
// needs nothing of rank 1's keys; rank 1 needs all of rank 0's. So the ring's forward sends
// 2 * (N/2) * D * 4 bytes (K and V of rank 0's rows) from rank 0 and nothing from rank 1; the backward
// sends the same K/V again, and rank 1 sends dK and dV of those rows home: 2 * (N/2) * D * 4 bytes.
#include <cstdint>
#include <vector>

#include "longattn/distributed.hpp"
#include "longattn/layout.hpp"
#include "longattn/pattern.hpp"

namespace longattn {

struct ModelJob {
    std::int64_t tokens = 0, batch = 1, heads = 1, kv_heads = 1, head_dim = 64;
    DType dtype = DType::f32;  // storage of Q, K, V, O and dO (the gradients are fp32)
    LayoutKind layout = LayoutKind::zigzag;
    int ranks = 1;
    DistOptions dist;  // strategy and ulysses_degree
};

struct RankCost {
    std::uint64_t fwd_bytes = 0, bwd_bytes = 0;  // sent by this rank in one forward, one backward call
    // Allowed (query, key) pairs this rank's kernels attend in one call, over every batch entry and query
    // head (the backward visits the same pairs); counted only when asked.
    double pairs = 0;
    // Ring and hybrid: the pairs attended at each ring step, and the K/V bytes sent at its end (forward).
    std::vector<double> step_pairs;
    std::vector<std::uint64_t> step_bytes;
};

// Every rank's cost. count_pairs: also the pairs (a count over runs of consecutive positions: cheap for
// contiguous and zigzag layouts, about rows x rows / ranks for striped ones).
std::vector<RankCost> model_costs(const ModelJob& job, const Pattern& pattern, bool count_pairs = true);

}  // namespace longattn
