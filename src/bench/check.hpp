#pragma once
// The bench's self-check (-c): an exact fp64 reference on sampled rows, cheap at any length because
// every input row can be regenerated (or read) by any rank.
//   forward:  O and LSE of sampled query rows;
//   backward: dQ of the sampled query rows, and dK, dV of sampled key rows. A key's gradient sums over
//             every query that attends it; those queries' LSE and delta = rowsum(dO * O) are taken
//             from the run (all ranks' rows, gathered), while everything else is recomputed in fp64.
// A value is wrong when |got - fp64| > tol * max(1, |fp64|), tol = 2^-13 (fp32), 2^-7 (bf16), 2^-10
// (fp16): a few units of the storage type's roundoff.
#include <cstdint>
#include <vector>

#include "bench/bench.hpp"
#include "bench/inputs.hpp"

namespace longattn::bench {

// One rank's rows after a run. Views are [B, S, H, D]; lse is [B, Hq, S].
struct RankRows {
    const std::int64_t* pos = nullptr;  // global position of each local row
    std::int64_t S = 0;
    TensorView o;
    const float* lse = nullptr;
    TensorView dq, dk, dv;              // unset without a backward pass
    // [B, Hq, N] over the whole sequence, for the key-row check (backward only).
    const float* lse_all = nullptr;
    const float* delta_all = nullptr;
};

struct CheckResult {
    double max_err = 0;
    std::int64_t wrong = 0, values = 0;
};

double check_tolerance(DType t);
// Values of this rank's outputs that are NaN or infinite (an LSE of -inf, a row without keys, is fine).
// The check counts them as wrong; --save refuses to write them unless --allow-nonfinite.
std::int64_t count_nonfinite(const RankRows& r, std::int64_t B, std::int64_t H);
// Local row indices the check samples: spread evenly, the first and the last included.
std::vector<std::int64_t> sampled_rows(std::int64_t S, int count);
CheckResult check_rows(const Job& job, const Inputs& in, const Pattern& pat, std::int64_t N, const RankRows& r,
                       int threads);
// delta[b, h, s] = rowsum(dO * O) of local rows, fp64 sums of the stored values (what the backward read).
std::vector<float> row_delta(const TensorView& o, const TensorView& dout);

}  // namespace longattn::bench
