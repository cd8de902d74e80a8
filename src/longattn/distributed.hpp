#pragma once
// Distributed attention over one long sequence sharded across the ranks of a communicator.
//
// Two entries: a Plan, built once for (communicator, the global positions of the local rows, Pattern,
// shapes, DistOptions) and called for every forward and backward of a training run; and the one-shot
// attention_forward/backward, which build a plan, call it once and drop it.
//
// Every rank passes its shard: Q [B, S_local, Hq, D], K and V [B, S_local, Hkv, D], and the global
// position of each local row (as a Layout gives them: contiguous, zigzag, striped or any other
// assignment, shards of any size). Outputs are the rank's rows: O [B, S_local, Hq, D], LSE
// [B, Hq, S_local]; backward gives dQ, dK, dV for the rank's rows in fp32. Results equal the
// single-process kernels on the whole sequence (up to fp32 merge rounding).
#include <cstdint>
#include <memory>
#include <string>

#include "longattn/pattern.hpp"
#include "longattn/tensor.hpp"

namespace longattn {

namespace comm {
class Communicator;
}

enum class StrategyKind { ring, ulysses, hybrid, allgather };
StrategyKind parse_strategy(const std::string& name);  // throws Error naming "strategy"
const char* strategy_name(StrategyKind k);

struct AutoChoice;  // longattn/cost_model.hpp

struct DistOptions {
    StrategyKind strategy = StrategyKind::ring;
    int ulysses_degree = 1;          // hybrid: ranks per Ulysses group; must divide the rank count
    std::int64_t kv_head_chunk = 0;  // allgather: kv heads gathered at a time (0 = all) to bound memory
    int threads = 0;                 // kernel threads per rank (0 = all)
    int progress_chunks = 4;         // ring: kernel calls per step, with transfer progress between them
    // Set: a plan takes the strategy and Ulysses degree the cost model predicts fastest for its shards
    // on this cluster (among those that fit its memory) in place of strategy and ulysses_degree; the
    // plan's options() say which.
    std::shared_ptr<const AutoChoice> choose;
};

struct DistStats {
    double total_s = 0, kernel_s = 0, wait_s = 0;  // wall, inside kernels, blocked on communication
    // CPU time of the process (all its threads) inside the kernels: with more ranks than cores a rank's
    // kernel wall time depends on the scheduler, its CPU time does not
    double kernel_cpu_s = 0;
    double setup_s = 0;  // building the plan, included in total_s (one-shot calls; 0 through a kept Plan)
    std::uint64_t bytes_sent = 0;
    std::uint64_t setup_bytes = 0;  // of bytes_sent, what building the plan sent (one-shot calls)
    std::uint64_t scratch_peak_bytes = 0;  // largest working memory the strategy held at once
    std::int64_t kernel_calls = 0, skipped_blocks = 0, skipped_transfers = 0;
};

// pos and pattern: for the one-shot calls; a Plan has its own (leave them null).
struct DistForwardArgs {
    TensorView q, k, v;   // local shards, any storage dtype
    TensorView o;         // local output, any dtype
    float* lse = nullptr; // [B, Hq, S_local]
    const std::int64_t* pos = nullptr;  // global position of each local row
    const Pattern* pattern = nullptr;
    std::int64_t head_offset = 0;       // global index of query head 0 (for per-head ALiBi slopes)
};

struct DistBackwardArgs {
    TensorView q, k, v, o, dout;  // o: the forward's output shard
    const float* lse = nullptr;   // the forward's LSE shard
    TensorView dq, dk, dv;        // fp32 shards
    bool accumulate = false;
    const std::int64_t* pos = nullptr;
    const Pattern* pattern = nullptr;
    std::int64_t head_offset = 0;
};

// The local shard a plan is built for: Q [batch, rows, heads, head_dim], K and V [batch, rows,
// kv_heads, head_dim]. Every rank has the same batch, heads, kv_heads and head_dim; rows may differ
// (and may be 0).
struct PlanShape {
    std::int64_t batch = 1, rows = 0, heads = 1, kv_heads = 1, head_dim = 64;
};

// Working memory of one call at its peak, in bytes, beyond the caller's tensors.
struct MemoryEstimate {
    std::uint64_t scratch = 0;  // the strategy's buffers (what DistStats::scratch_peak_bytes measures)
    std::uint64_t kernel = 0;   // the CPU kernels' own (packed K/V, backward row chunks); 0 for CUDA
    std::uint64_t total() const { return scratch + kernel; }
};

namespace dist {
struct PlanState;
}

// What every call shares, built once: the shard table (every rank's positions), the ring's
// schedule (which rank needs which shard, which rows travel), the Ulysses head split, the hybrid's
// sub-communicators (split here, never per call), and the working memory of the calls (kept between
// calls, so a training step allocates nothing). Building is collective over comm; so are forward()
// and backward(), called by every rank in the same order. The communicator, and nothing else, must
// outlive the plan: positions and pattern are copied. A plan keeps no state of a call: every layer of
// a model whose shapes, positions and pattern agree calls the same plan, and shares its workspace
// (as large as one call's working memory).
class Plan {
public:
    Plan(comm::Communicator& comm, const std::int64_t* pos, const Pattern& pattern, const PlanShape& shape,
         const DistOptions& opt);
    ~Plan();
    Plan(Plan&&) noexcept;
    Plan& operator=(Plan&&) noexcept;
    Plan(const Plan&) = delete;
    Plan& operator=(const Plan&) = delete;

    // Tensors of the plan's shapes (any storage dtype, any device the build has); args.pos and
    // args.pattern must be null.
    void forward(const DistForwardArgs& args, DistStats* stats = nullptr);
    void backward(const DistBackwardArgs& args, DistStats* stats = nullptr);

    const PlanShape& shape() const;
    const DistOptions& options() const;
    // Working memory held between calls, and handing it back (the next call allocates it again).
    std::uint64_t workspace_bytes() const;
    // What a forward (or backward) call will hold at its peak with tensors of this storage type and
    // device, from the plan's tables alone (nothing is allocated): for checking that a job fits.
    MemoryEstimate memory_estimate(bool backward, DType storage, Device device = Device::cpu) const;
    // The plan's own tables (every rank's positions, the ring's schedule), held for its lifetime.
    std::uint64_t table_bytes() const;
    void release_workspace();

private:
    std::unique_ptr<dist::PlanState> s_;
};

void attention_forward(comm::Communicator& comm, const DistOptions& opt, const DistForwardArgs& args,
                       DistStats* stats = nullptr);
void attention_backward(comm::Communicator& comm, const DistOptions& opt, const DistBackwardArgs& args,
                        DistStats* stats = nullptr);

}  // namespace longattn
