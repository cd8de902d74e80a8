#pragma once
// longattn-bench: the job description shared by the option parser and the runners.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "longattn/dtype.hpp"
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
};

// Runs the single-process kernel benchmark and prints the table; returns the number of wrong checks.
int run_kernel_bench(const Job& job);

}  // namespace longattn::bench
