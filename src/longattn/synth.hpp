#pragma once
// Counter-based synthetic inputs: the value of (seed, tensor, batch, token, head, dim) is a pure
// function of those numbers, so any rank can regenerate any row of any tensor, an exact reference
// for sampled rows is cheap at any length, and results do not depend on the rank count.
#include <cstdint>

#include "longattn/tensor.hpp"

namespace longattn {

enum class SynthTensor : std::uint32_t { q = 1, k = 2, v = 3, dout = 4 };

// Uniform in [-1, 1), fp32-exact.
float synth_value(std::uint64_t seed, SynthTensor t, std::int64_t batch, std::int64_t token, std::int64_t head,
                  std::int64_t dim);

// Fills a rank-4 view [B, S, H, D]; row s holds global token positions[s]. Values are rounded to the
// view's dtype. Threads over rows.
void fill_synth(const TensorView& view, std::uint64_t seed, SynthTensor t, const std::int64_t* positions);

}  // namespace longattn
