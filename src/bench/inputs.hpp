#pragma once
// Where Q, K, V and dO come from: the counter-based generator (any rank regenerates any row) or .npy
// files [S, H, D] (each rank reads only the rows it needs). Values are rounded to the job's storage
// type in both cases, so the fp64 check sees exactly what the kernels saw.
#include <cstdint>
#include <memory>

#include "bench/bench.hpp"
#include "bench/npy.hpp"
#include "longattn/synth.hpp"
#include "longattn/tensor.hpp"

namespace longattn::bench {

class Inputs {
public:
    explicit Inputs(const Job& job);
    bool loaded() const { return q_ != nullptr; }
    // Rows [0, S) of view [B, S, H, D] get tensor t at global positions pos[0, S).
    void fill(SynthTensor t, const TensorView& view, const std::int64_t* pos) const;
    // out[0, D) = row (batch b, global position p, head h) of tensor t.
    void row(SynthTensor t, std::int64_t b, std::int64_t p, std::int64_t h, double* out) const;

private:
    const NpyReader* reader(SynthTensor t) const;
    std::uint64_t seed_;
    DType dtype_;
    std::int64_t D_;
    bool allow_nonfinite_;
    std::unique_ptr<NpyReader> q_, k_, v_, dout_;
};

}  // namespace longattn::bench
