#pragma once
// Plain (unfused) attention: S = scale * Q K^T, modifiers, mask, softmax, O = P V, and its gradient.
// At fp64 it is the reference every kernel is judged against. At lower precisions it is the "plain
// same-precision implementation" of FlashAttention's tolerance rule: products accumulate in fp32 and
// S, P, O (and dP, dS and the gradients) are rounded to the storage type, as a framework would.
#include <vector>

#include "kernels/attention.hpp"

namespace longattn::kernels {

enum class RefPrecision { f64, f32, bf16, f16 };

struct RefForward {
    std::vector<double> o;    // [B, Sq, Hq, D] contiguous
    std::vector<double> lse;  // [B, Hq, Sq]; -inf for a row with no allowed key
};
struct RefBackward {
    std::vector<double> dq;   // [B, Sq, Hq, D]
    std::vector<double> dk;   // [B, Sk, Hkv, D]
    std::vector<double> dv;   // [B, Sk, Hkv, D]
};

// Reads q, k, v (and dout) through their views; ignores p.o, p.lse and the outputs.
RefForward reference_forward(const FwdParams& p, RefPrecision prec = RefPrecision::f64);
// Where the backward takes P and O from:
//   recompute: its own softmax (row maximum subtracted) and its own O; the exact fp64 reference.
//   saved:     P = exp(S - lse) from the given p.lse and delta = rowsum(dO * O) from the given p.o, as
//              every flash backward must (it keeps no row maximum). At fp32 this is the plain
//              same-precision backward a flash kernel is judged against: with the recomputed softmax
//              a one-hot row gets P = 1 exactly, which no implementation reading a stored fp32 LSE
//              can match once |LSE| is large (softmax scale 1e3).
enum class RefSource { recompute, saved };
RefBackward reference_backward(const BwdParams& p, RefPrecision prec = RefPrecision::f64,
                               RefSource source = RefSource::recompute);

}  // namespace longattn::kernels
