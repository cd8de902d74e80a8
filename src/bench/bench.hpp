#pragma once
// longattn-bench: the job description shared by the option parser and the runners.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "longattn/distributed.hpp"
#include "longattn/dtype.hpp"
#include "longattn/layout.hpp"
#include "longattn/pattern.hpp"

namespace longattn::bench {

enum class Mode { fwd, bwd, fwd_bwd };

struct Job {
    Mode mode = Mode::fwd;
    std::vector<std::int64_t> lengths;   // sequence lengths of the sweep
    std::vector<int> threads;            // thread counts of the sweep (0 = all)
    std::int64_t batch = 1, heads = 4, kv_heads = 0, head_dim = 128;
    DType dtype = DType::f32;
    int iters = 5, warmup = 1;
    bool check = true;
    bool baseline = false;               // also time the unfused GEMM-softmax-GEMM baseline
    bool peak = true;                    // measure this CPU's FMA peak first
    std::uint64_t seed = 1;
    int check_rows = 16;                 // sampled query rows (and key rows) per head for -c
    PatternSpec pattern;                 // seq_len is filled in per length
    std::int64_t docs = 0;               // split into this many equal documents (0 = none)
    std::vector<std::int64_t> doc_lens;  // or these lengths, repeated to cover the sequence
    // Distributed runs (strategy other than "kernel").
    bool distributed = false;
    DistOptions dist;
    LayoutKind layout = LayoutKind::zigzag;
    bool per_rank = false;               // print every rank's kernel, wait, bytes and memory
    int inject_failure = -1;             // this rank throws mid-run (tests the abort path)
};

// The job's pattern for one sequence length (documents laid out, random part sized).
PatternSpec spec_for_length(const Job& job, std::int64_t L);

// Single-process kernel benchmark; prints the table and returns 0 when every check passed.
int run_kernel_bench(const Job& job);

}  // namespace longattn::bench

namespace longattn::comm {
class Communicator;
}

namespace longattn::bench {
// Distributed benchmark under mpirun; the same return convention.
int run_dist_bench(const Job& job, comm::Communicator& comm);

}  // namespace longattn::bench
