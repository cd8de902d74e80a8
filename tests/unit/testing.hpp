#pragma once
// Helpers shared by the kernel tests: owning tensors filled from a seeded generator, a problem
// description that builds the kernel parameters, and FlashAttention's tolerance rule.
//
// The tolerance rule (flash_rule): a kernel output passes when
//     max|kernel - fp64| <= factor * max|plain - fp64| + floor
// where "plain" is the unfused same-precision implementation (reference_forward/backward at the
// storage precision). factor is 2 for forward outputs (as FlashAttention's tests) and 3 for
// gradients, because the kernel recomputes P from the stored LSE and reduces dK/dV over query blocks
// in an order the unfused path does not share. See floor_for() for the floors.
#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/attention.hpp"
#include "kernels/backend.hpp"
#include "kernels/cpu/reference.hpp"
#include "longattn/dtype.hpp"
#include "longattn/pattern.hpp"
#include "longattn/tensor.hpp"

namespace longattn::test {

using kernels::BwdParams;
using kernels::FwdParams;
using kernels::RefBackward;
using kernels::RefForward;
using kernels::RefPrecision;

constexpr double kForwardFactor = 2.0;
constexpr double kGradFactor = 3.0;

// An owning [B, S, H, D] tensor. With pad > 0 each head row is followed by pad unused elements
// (stride[2] = D + pad) that hold NaN, so a kernel that ignores the strides produces NaN.
class Tensor {
public:
    Tensor() = default;
    Tensor(DType dtype, std::array<std::int64_t, 4> shape, std::int64_t pad = 0);

    TensorView view() const { return view_; }
    DType dtype() const { return view_.dtype; }
    const std::array<std::int64_t, 4>& shape() const { return view_.shape; }
    std::int64_t numel() const { return view_.numel(); }

    // Logical element n of the contiguous [B, S, H, D] order.
    float get(std::int64_t n) const;
    void set(std::int64_t n, float x);  // rounded to the storage type

    // Standard normal values (rounded to the storage type) keyed by (seed, element index).
    void fill_random(std::uint64_t seed, double amplitude = 1.0);
    void fill(float x);
    // All logical elements in contiguous order, exactly.
    std::vector<double> to_f64() const;
    // Raw storage including padding, for bitwise comparisons.
    const std::vector<std::byte>& bytes() const { return bytes_; }

private:
    std::int64_t offset_of(std::int64_t n) const;
    std::vector<std::byte> bytes_;
    TensorView view_;
};

// start, start + step, ... (n values).
std::vector<std::int64_t> positions(std::int64_t n, std::int64_t start = 0, std::int64_t step = 1);
// Concatenation of position lists (e.g. the two chunks a zigzag layout gives one rank).
std::vector<std::int64_t> concat(const std::vector<std::int64_t>& a, const std::vector<std::int64_t>& b);

RefPrecision precision_of(DType t);

// One attention problem. Empty position lists mean 0..Sq-1 and 0..Sk-1.
struct Case {
    std::string name = "case";
    std::int64_t B = 1, Sq = 64, Sk = 64, Hq = 2, Hkv = 2, D = 64;
    DType dtype = DType::f32;  // q, k, v, dout and o, unless overridden below
    std::optional<DType> k_dtype, v_dtype, o_dtype;
    std::vector<std::int64_t> q_pos, k_pos;
    PatternSpec spec;
    std::uint64_t seed = 1;
    std::int64_t head_offset = 0;  // global index of query head 0 (heads split across ranks)
    std::int64_t pad = 0;          // see Tensor
    double amplitude = 1.0;        // of q and k (larger scores)
};

struct Problem {
    explicit Problem(Case c);

    Case c;
    Pattern pattern;
    std::vector<std::int64_t> q_pos, k_pos;
    Tensor q, k, v, dout;

    DType out_dtype() const { return c.o_dtype.value_or(c.dtype); }
    FwdParams fwd_params(const Tensor& o, float* lse, int threads = 0) const;
    BwdParams bwd_params(const Tensor& o, const std::vector<float>& lse, const Tensor& dq, const Tensor& dk,
                         const Tensor& dv, int threads = 0, bool accumulate = false) const;
};

struct FwdOut {
    Tensor o;
    std::vector<float> lse;
};
struct BwdOut {
    Tensor dq, dk, dv;
};

// A test tensor (or float array) on device d, padding and strides included, copied from the host on
// construction and back by to_host(); on the CPU, the host memory itself.
class OnDevice : public kernels::DeviceCopy {
public:
    OnDevice(Device d, const Tensor& t) : DeviceCopy(d, t.view(), t.bytes().size()) {}
    OnDevice(Device d, const std::vector<float>& v)
        : DeviceCopy(d, contiguous_view(const_cast<float*>(v.data()), DType::f32, 1, 1, 1, static_cast<std::int64_t>(v.size()))) {}
    float* floats() const { return view().ptr<float>(); }
};

// The kernels of any backend (kernels/backend.hpp) on the test's host tensors: inputs are copied to
// the device (padding and strides included), the kernel runs there, and its outputs come back into
// `out` / `g`, whose contents are the starting partial (forward) or the sums added to (backward) when
// accumulating. On the CPU the host tensors are used in place.
void forward_on(Device d, const Problem& pb, FwdOut& out, bool accumulate = false, int threads = 0);
void backward_on(Device d, const Problem& pb, const FwdOut& fwd, BwdOut& g, bool accumulate = false, int threads = 0);
// Fresh outputs, NaN everywhere, so that untouched outputs show up.
FwdOut fresh_forward_out(const Problem& pb);
BwdOut fresh_grads(const Case& c);
// The backend's kernels into fresh outputs.
FwdOut run_forward(const Problem& pb, int threads = 0, Device d = Device::cpu);
BwdOut run_backward(const Problem& pb, const FwdOut& fwd, int threads = 0, Device d = Device::cpu);
// The forward result the backward consumes: the fp64 reference rounded to the output dtype and fp32,
// so backward tests do not depend on the forward kernel.
FwdOut reference_forward_out(const Problem& pb);

// max |got - ref| and where; NaN anywhere or a mismatch of infinities gives +inf. Equal infinities
// count as 0.
struct ErrorAt {
    double err = 0;
    std::size_t index = 0;
};
ErrorAt max_abs_err(const std::vector<double>& got, const std::vector<double>& ref);

// The rows of a [B, S, HD] array at the given positions, batch by batch; of an LSE array [BH, S] at the
// given positions, (batch, head) by (batch, head). A distributed rank's part of a whole-sequence result.
std::vector<double> pick_rows(const std::vector<double>& full, std::int64_t B, std::int64_t S, std::int64_t HD,
                              const std::vector<std::int64_t>& rows);
std::vector<double> lse_rows(const std::vector<double>& lse, std::int64_t BH, std::int64_t S,
                             const std::vector<std::int64_t>& rows);
double max_abs_finite(const std::vector<double>& v);
std::vector<double> to_f64(const std::vector<float>& v);

// The floor of the rule, relative to m = max(1, max|fp64 reference|):
//   fp32 outputs: 1e-5 * m. About 170 units of fp32 roundoff: the kernel and the plain path can both
//     be within a few ulps of fp64, so the plain error alone would make the bound ~1e-7, tighter than
//     any reordering of an fp32 sum of a thousand terms can promise.
//   bf16 / fp16 outputs: the unit roundoff of the type at m (2^-8 * m, 2^-11 * m): the kernel rounds
//     its fp32 result to storage once at the end, which alone costs up to that much even when the
//     plain implementation happens to round a particular element luckily.
double floor_for(DType out_dtype, const std::vector<double>& ref);

// FlashAttention's rule with a message listing both errors, the bound and the floor.
::testing::AssertionResult flash_rule(const std::string& what, const std::vector<double>& got,
                                      const std::vector<double>& plain, const std::vector<double>& ref,
                                      DType out_dtype, double factor);

// Forward check: O under the rule (factor 2, plain at the output precision); LSE under the rule
// against the plain fp32 implementation (LSE is always fp32) with floor 1e-5 * max(1, max|LSE|);
// -inf exactly where the reference has no allowed key, and O exactly 0 on those rows.
void check_forward(const Problem& pb, const FwdOut& got);
// Runs the forward kernel and checks it.
void check_forward(const Case& c);
// Backward check of dQ, dK, dV (fp32 outputs) under the rule with factor 3; the plain path runs at
// the input precision, so for bf16 inputs its gradients are rounded to bf16 as a framework's would be,
// and reads P and delta from the saved (O, LSE) as the kernel does (RefSource::saved).
void check_backward(const Problem& pb, const FwdOut& fwd, const BwdOut& got);
void check_backward(const Case& c);

// Index of row (b, h, s) in an LSE array [B, H, S].
inline std::size_t lse_index(std::int64_t b, std::int64_t h, std::int64_t s, std::int64_t H, std::int64_t S) {
    return static_cast<std::size_t>((b * H + h) * S + s);
}

// Every pattern kind alone and in combinations, over n positions, block size 16 (a mix of EMPTY,
// PARTIAL and FULL tiles for any kernel tiling), with alibi slopes for `heads` query heads.
struct NamedSpec {
    std::string name;
    PatternSpec spec;
};
std::vector<NamedSpec> pattern_zoo(std::int64_t n, std::int64_t heads);

// Alibi slopes as in the ALiBi paper: 2^(-8 (h+1) / H).
std::vector<float> alibi_slopes(std::int64_t heads);

}  // namespace longattn::test

namespace longattn::test {

// The kernels of one backend, as the checks below call them.
struct Runners {
    std::function<FwdOut(const Problem&)> forward;
    std::function<BwdOut(const Problem&, const FwdOut&)> backward;
};
Runners backend_runners(Device d, int threads = 0);
inline Runners cpu_runners(int threads = 0) { return backend_runners(Device::cpu, threads); }

// End to end, as a user runs it: the forward kernel's (O, LSE) feed the backward kernel, and each of
// O, LSE, dQ, dK, dV is compared with fp64 next to the plain same-precision implementation, whose
// backward recomputes P as a textbook softmax (as autograd through an unfused attention does).
enum ChainOut { kO, kLse, kDq, kDk, kDv, kChainOuts };
const char* chain_name(int out);
struct ChainErrors {
    double kernel[kChainOuts] = {};
    double plain[kChainOuts] = {};
    double floor[kChainOuts] = {};
    bool pass(int out) const;  // the rule: factor 2 for O and LSE, 3 for gradients, plus the floor
};
ChainErrors chain_errors(const Problem& pb, const Runners& run);
// Asserts the rule on every output of chain_errors.
void check_chain(const Case& c, const Runners& run);

// Sharp softmax: q and k scaled so that the scores have the given standard deviation with the default
// scale 1/sqrt(D) (q.k of N(0, a^2) entries has standard deviation a^2 sqrt(D)), every pattern family of
// pattern_zoo(n, 8), GQA 4:1.
double amplitude_for_score_std(double std);
struct SharpParam {
    NamedSpec pattern;
    double score_std;
    DType dtype;
};
std::vector<SharpParam> sharp_params(std::int64_t n, const std::vector<DType>& dtypes);
Case sharp_case(const SharpParam& p, std::int64_t n, std::int64_t D);
std::string sharp_name(const SharpParam& p);
void PrintTo(const SharpParam& p, std::ostream* os);  // gtest's name for a parameter

// Non-finite inputs, as PyTorch treats them, over patterns that take every path of the kernels (FULL
// tiles, interval and element masks, softcap and ALiBi), n tokens, head dim D:
// a NaN or Inf in one element of a query row makes that row's O, LSE and dQ NaN (Inf under softcap is
// the cap, an ordinary row); every other row is bit for bit the clean run's.
void check_bad_query_row(const Runners& run, const std::vector<DType>& dtypes, std::int64_t n, std::int64_t D);
// A NaN in a key makes NaN exactly the rows allowed to attend it; the others are the clean run's.
void check_nan_key(const Runners& run, const std::vector<DType>& dtypes, std::int64_t n, std::int64_t D);
// A NaN in a value makes NaN the rows that attend it, with their LSE unchanged.
void check_nan_value(const Runners& run, DType dtype, std::int64_t n, std::int64_t D);
// A row that may attend no key stays O = 0, LSE = -inf even with a NaN query.
void check_masked_row_with_nan_query(const Runners& run, DType dtype, std::int64_t n, std::int64_t D);

}  // namespace longattn::test
