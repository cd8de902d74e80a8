#pragma once
// What the kernel benchmark measures the CPU flash kernels against, built with the kernels' own
// vector width and tile products: the machine's FMA peak, and an unfused attention.
#include "kernels/attention.hpp"

namespace longattn::kernels {

// GFLOP/s of one thread issuing independent fused multiply-adds of the kernels' vector type.
double measure_fma_peak();

// Unfused attention over panels of full rows: S = scale Q K^T for all keys (materialized), mask,
// softmax, O = P V, with the same register-blocked gemm and exp2 as the flash kernels. Writes p.o and
// p.lse; p.accumulate and p.lse_lo are not supported.
void unfused_forward_cpu(const FwdParams& p);

}  // namespace longattn::kernels
