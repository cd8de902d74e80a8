#pragma once
// Distributed attention over one long sequence sharded across the ranks of a communicator.
//
// Every rank passes its shard: Q [B, S_local, Hq, D], K and V [B, S_local, Hkv, D], and the global
// position of each local row (as a Layout gives them: contiguous, zigzag, striped or any other
// assignment, shards of any size). Outputs are the rank's rows: O [B, S_local, Hq, D], LSE
// [B, Hq, S_local]; backward gives dQ, dK, dV for the rank's rows in fp32. Results equal the
// single-process kernels on the whole sequence (up to fp32 merge rounding).
#include <cstdint>
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

struct DistOptions {
    StrategyKind strategy = StrategyKind::ring;
    int ulysses_degree = 1;          // hybrid: ranks per Ulysses group; must divide the rank count
    std::int64_t kv_head_chunk = 0;  // allgather: kv heads gathered at a time (0 = all) to bound memory
    int threads = 0;                 // kernel threads per rank (0 = all)
    int progress_chunks = 4;         // ring: kernel calls per step, with transfer progress between them
};

struct DistStats {
    double total_s = 0, kernel_s = 0, wait_s = 0;  // wall, inside kernels, blocked on communication
    std::uint64_t bytes_sent = 0;
    std::uint64_t scratch_peak_bytes = 0;  // largest working memory the strategy held at once
    std::int64_t kernel_calls = 0, skipped_blocks = 0, skipped_transfers = 0;
};

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

void attention_forward(comm::Communicator& comm, const DistOptions& opt, const DistForwardArgs& args,
                       DistStats* stats = nullptr);
void attention_backward(comm::Communicator& comm, const DistOptions& opt, const DistBackwardArgs& args,
                        DistStats* stats = nullptr);

}  // namespace longattn
