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
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "longattn/distributed.hpp"
#include "longattn/kv_cache.hpp"
#include "longattn/layout.hpp"
#include "longattn/pattern.hpp"

namespace longattn {

struct ModelJob {
    std::int64_t tokens = 0, batch = 1, heads = 1, kv_heads = 1, head_dim = 64;
    DType dtype = DType::f32;  // storage of Q, K, V, O and dO (the gradients are fp32)
    LayoutKind layout = LayoutKind::zigzag;
    int ranks = 1;
    DistOptions dist;  // strategy and ulysses_degree
    // The kernels' tiles (query rows x key rows): a PARTIAL tile is computed whole, then masked. 0: the
    // CPU kernels' (forward 96 x 128, or 48 x 64 for sparse parts that are not key intervals; backward
    // 64 x 64).
    std::int64_t fwd_tile_q = 0, fwd_tile_k = 0, bwd_tile_q = 64, bwd_tile_k = 64;
    // Every rank's global positions in place of the layout's (a plan's shards as they are); tokens is
    // then their total.
    std::vector<std::vector<std::int64_t>> positions;
};

struct RankCost {
    std::uint64_t fwd_bytes = 0, bwd_bytes = 0;  // sent by this rank in one forward, one backward call
    // Allowed (query, key) pairs this rank's kernels attend in one call, over every batch entry and query
    // head (the backward visits the same pairs); counted only when asked.
    double pairs = 0;
    // The pairs the kernels compute: every pair of the tiles that are not EMPTY, forward and backward;
    // and of those, the pairs of PARTIAL tiles (masked before the arithmetic).
    double fwd_work = 0, bwd_work = 0, fwd_partial = 0, bwd_partial = 0;
    // Ring and hybrid: the pairs attended and computed at each ring step, and the bytes sent during it,
    // forward and backward (K/V; in the backward also the running dK/dV).
    std::vector<double> step_pairs, step_fwd_work, step_bwd_work, step_fwd_partial, step_bwd_partial;
    std::vector<std::uint64_t> step_bytes, step_bwd_bytes;
    // Of fwd_bytes and bwd_bytes, what the all-to-alls send (Ulysses, all-gather), and how many there are.
    std::uint64_t a2a_fwd_bytes = 0, a2a_bwd_bytes = 0;
    int a2a_fwd_calls = 0, a2a_bwd_calls = 0;
    // Memory: the rank's shards of Q, K, V, O (storage type) and LSE, and for the backward also dO
    // (storage) and dQ, dK, dV (fp32); the strategy's scratch at its peak in a forward and in a backward
    // call, as Plan::memory_estimate counts it (the CPU kernels' own buffers and the plan's tables apart).
    std::uint64_t fwd_tensors = 0, bwd_tensors = 0, fwd_scratch = 0, bwd_scratch = 0;
    // What the rank holds at its peak: the forward's tensors and scratch, or in the backward all of them.
    std::uint64_t peak(bool backward) const {
        return backward ? std::max(fwd_tensors + fwd_scratch, fwd_tensors + bwd_tensors + bwd_scratch)
                        : fwd_tensors + fwd_scratch;
    }
};

// Every rank's cost. count_pairs: also the pairs and the work (counts over runs of consecutive positions
// and over tiles: cheap for contiguous and zigzag layouts, about rows x rows / ranks for striped ones).
std::vector<RankCost> model_costs(const ModelJob& job, const Pattern& pattern, bool count_pairs = true);

// The time part: a cluster and what one call costs on it.
//
// A cluster is `nodes` nodes of `devices_per_node` devices, rank r on node r / devices_per_node; a message
// of b bytes between two devices takes latency + b / bandwidth over the link between them (within a node
// or across); the kernels compute a pair of one head (RankCost's work: the pairs of the tiles they
// visit) at 4 D FLOPs forward and 10 D backward (the FlashAttention convention) at the device's
// throughput. A ring step takes the slowest rank's
// max(kernel, transfer to the next rank): transfers overlap the kernel. An all-to-all takes
// the latency plus the rank's bytes over its links (the bytes to ranks on other nodes over the inter-node
// link, the rest within the node, in parallel; within the node at the all-to-all figures where the
// cluster gives them), and overlaps nothing.
struct ClusterSpec {
    std::string name;
    int nodes = 1, devices_per_node = 1;
    double intra_bandwidth = 0, intra_latency = 0;  // bytes/s one way per device, seconds
    // An all-to-all among a node's devices: the bytes/s each sends and the latency per call (0: not
    // given, the point-to-point figures above)
    double alltoall_bandwidth = 0, alltoall_latency = 0;
    double inter_bandwidth = 0, inter_latency = 0;
    double fwd_flops = 0, bwd_flops = 0;  // the attention kernels' FLOP/s per device (pairs of FULL tiles)
    double fwd_partial_extra = 0, bwd_partial_extra = 0;  // a pair of a PARTIAL tile costs 1 + this
    double memory_bandwidth = 0;  // bytes/s a device (a rank's share of it) reads its memory at (0: not given)
    double decode_flops = 0;      // the decode kernel's FLOP/s where memory does not bound it (0: fwd_flops)
    std::int64_t tile_q = 0, tile_k = 0;  // the device kernels' tiles (0: the CPU kernels', ModelJob)
    double memory = 0;                    // bytes per device (0: not given)
    int devices() const { return nodes * devices_per_node; }
};

// An INI file:
//   [cluster] name = ..., nodes = N, devices_per_node = G
//   [intra] bandwidth_GBps = ..., latency_us = ...     (within a node; required when G > 1)
//           alltoall_bandwidth_GBps = ..., alltoall_latency_us = ...   (optional, together)
//   [inter] bandwidth_GBps = ..., latency_us = ...     (across nodes; required when N > 1)
//   [device] fwd_tflops = ..., bwd_tflops = ..., memory_GiB = ...   (FLOPs of the pairs computed)
//            fwd_partial_extra = ..., bwd_partial_extra = ...      (optional, 0: masked pairs cost the same)
//            tile_q = ..., tile_k = ...    (optional: the kernels' tiles, forward and backward; 0: the CPU's)
//            memory_bandwidth_GBps = ..., decode_tflops = ...   (optional; the decode model needs the first)
// Unknown keys, missing ones, bad numbers: an Error naming the file, the line and the key.
ClusterSpec load_cluster(const std::string& path);

struct Prediction {
    double fwd_s = 0, bwd_s = 0;  // one forward call, one backward call
    double compute_s = 0;         // of fwd_s + bwd_s, the kernels on the critical path
    double compute_fwd_s = 0;     // of compute_s, the forward's
    double exposed_s = 0;         // the rest: communication not hidden behind kernels
    double ideal_s = 0;           // every pair's FLOPs spread evenly over the ranks, no communication
    double ideal_fwd_s = 0;       // of ideal_s, the forward's
    std::uint64_t max_bytes = 0;  // the most one rank sends in a forward and a backward call
    // The most one rank holds (RankCost::peak) in a forward call, and in a backward one; per device: times
    // the ranks a device serves.
    std::uint64_t max_memory_fwd = 0, max_memory = 0;
    double device_memory(bool backward) const { return double(backward ? max_memory : max_memory_fwd) * ranks_per_device; }
    // Within the cluster's memory per device (always, when the cluster gives none).
    bool fits(const ClusterSpec& cl, bool backward) const { return cl.memory <= 0 || device_memory(backward) <= cl.memory; }
    double ranks_per_device = 1;
    std::vector<double> rank_fwd_kernel_s, rank_bwd_kernel_s;  // each rank's kernels over one call
    double efficiency() const { return fwd_s + bwd_s > 0 ? ideal_s / (fwd_s + bwd_s) : 1.0; }
};

// cost from model_costs with its pairs. More ranks than the cluster's devices share them evenly (as
// mpirun --oversubscribe does cores, consecutive ranks on one device): the kernels then run at
// devices / ranks of a device's throughput.
Prediction predict(const ClusterSpec& cluster, const ModelJob& job, const std::vector<RankCost>& cost);

// What --strategy auto weighs: every strategy (the hybrid at each Ulysses degree strictly between 1 and
// the ranks that divides them) on the zigzag and contiguous layouts, job.dist's other options kept (and
// the cluster's tiles where it gives them; ulysses_degree 1 but for the hybrid): those that fit the
// cluster's memory first, then fastest first by the predicted forward time (with backward: forward plus
// backward).
struct StrategyChoice {
    DistOptions dist;
    LayoutKind layout;
    Prediction p;
    double time_s;
    bool fits;  // Prediction::fits
};
// With job.positions given, the layout is theirs: only the strategies are weighed.
std::vector<StrategyChoice> rank_strategies(const ClusterSpec& cluster, const ModelJob& job, const Pattern& pattern,
                                            bool backward);

// DistOptions::choose: the cluster a plan is modelled on, the storage type of its calls' tensors (what
// the model's bytes count) and whether the backward is in the time that ranks the strategies.
struct AutoChoice {
    ClusterSpec cluster;
    DType dtype = DType::bf16;
    bool backward = true;
};
// The strategy and Ulysses degree that rank_strategies puts first for these shards (pos[r]: rank r's
// global positions) of a plan's shape on choice.cluster; opt's other fields kept, choose dropped.
DistOptions choose_strategy(const AutoChoice& choice, const std::vector<std::vector<std::int64_t>>& pos, const Pattern& pattern,
                            std::int64_t batch, std::int64_t heads, std::int64_t kv_heads, std::int64_t head_dim,
                            DistOptions opt);

// The decode step (longattn/kv_cache.hpp): every rank reads the (page, kv head) blocks of its pages
// that the step's queries attend, then one collective combines the partials. Counted exactly as the
// kernel and the combine do (DecodeStats::blocks_read, bytes_sent, bytes_received); timed as the roofline
// of the blocks' bytes at the device's memory bandwidth and the pages' pairs at its decode throughput,
// then the combine: an all-gather of every partial (log2 P latencies plus the others' partials over the
// link, then P - 1 merges at memory speed) or two all-reduces (2 log2 P latencies, a ring's 2 (P - 1) / P
// of their doubles each way); over the inter-node link when the ranks span nodes.
struct DecodeModelJob {
    std::int64_t batch = 1, context = 0, new_tokens = 1;  // sequences of `context` positions, then T new each
    std::int64_t heads = 1, kv_heads = 1, head_dim = 64, page_tokens = 64;
    DType dtype = DType::bf16;  // the cache's storage
    KvPlacement placement = KvPlacement::round_robin;
    LayoutKind layout = LayoutKind::zigzag;  // placement layout: the layout over the capacity
    std::int64_t capacity = 0;               // 0: context + new_tokens
    DecodeCombine combine = DecodeCombine::allgather;
    int ranks = 1;
};

struct DecodeRankCost {
    std::int64_t blocks = 0;       // (page, kv head) blocks read
    std::uint64_t read_bytes = 0;  // their bytes
    double work = 0;               // (query, key) pairs of the pages read, over the query heads (masked ones too)
    std::uint64_t sent = 0, received = 0;  // the combine's, as DecodeStats counts them
};

struct DecodePrediction {
    double kernel_s = 0, combine_s = 0;  // the slowest rank's kernel; the combine after it
    double step_s() const { return kernel_s + combine_s; }
    std::vector<double> rank_kernel_s;
};

// Each rank's cost of one step over context + new_tokens positions per sequence, every rank holding the
// positions its placement gives it in increasing order, page_tokens to a page (as KvCache::fill_synth
// and the appends place them; a prefill's rows lie where its layout put them instead).
std::vector<DecodeRankCost> decode_costs(const DecodeModelJob& job, const Pattern& pattern);
// Throws an Error naming the cluster file's key when it gives no memory bandwidth.
DecodePrediction predict_decode(const ClusterSpec& cluster, const DecodeModelJob& job, const std::vector<DecodeRankCost>& cost);

}  // namespace longattn
