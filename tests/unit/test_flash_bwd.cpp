// The CPU flash backward kernel against the fp64 reference gradients under FlashAttention's rule with
// factor 3 (testing.hpp). The kernel is fed the fp64 forward result (rounded to storage), so these
// tests do not depend on the forward kernel. Also: accumulate = true, exact zeros for masked rows and
// unattended keys, and bitwise determinism across thread counts.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "longattn/cpu_isa.hpp"
#include "longattn/error.hpp"
#include "testing.hpp"

namespace longattn::test {
namespace {

constexpr std::int64_t kN = 131;  // odd, so no tile of any kernel divides it

// ---- The reference gradient against finite differences of the reference forward ---------------

// L = sum(dO * O) in fp64, so dL/dx is what reference_backward returns.
double loss(const Problem& pb) {
    const Tensor o(DType::f32, {pb.c.B, pb.c.Sq, pb.c.Hq, pb.c.D});
    const auto r = kernels::reference_forward(pb.fwd_params(o, nullptr));
    const auto dout = pb.dout.to_f64();
    double l = 0;
    for (std::size_t n = 0; n < r.o.size(); ++n) l += dout[n] * r.o[n];
    return l;
}

TEST(ReferenceBackward, MatchesFiniteDifferences) {
    // Causal, window, softcap, ALiBi and GQA together; row 0 sees no key (keys start at position 1).
    Case c;
    c.Sq = c.Sk = 10;
    c.Hq = 2;
    c.Hkv = 1;
    c.D = 4;
    c.k_pos = positions(10, 1);
    c.spec.causal = true;
    c.spec.window = Window{5, 0};
    c.spec.softcap = 2.0f;
    c.spec.scale = 0.7f;
    c.spec.alibi_slopes = {0.25f, 0.125f};
    Problem pb(c);
    const FwdOut fwd = reference_forward_out(pb);
    const Tensor dq(DType::f32, pb.q.shape()), dk(DType::f32, pb.k.shape()), dv(DType::f32, pb.v.shape());
    const auto g = kernels::reference_backward(pb.bwd_params(fwd.o, fwd.lse, dq, dk, dv));

    const auto check = [&](const char* what, Tensor& t, const std::vector<double>& grad) {
        for (std::int64_t n = 0; n < t.numel(); ++n) {
            const float x = t.get(n);
            t.set(n, x + 1e-3f);
            const double hi = t.get(n), l_hi = loss(pb);
            t.set(n, x - 1e-3f);
            const double lo = t.get(n), l_lo = loss(pb);
            t.set(n, x);
            const double fd = (l_hi - l_lo) / (hi - lo);  // central difference, O(h^2) error
            EXPECT_NEAR(grad[static_cast<std::size_t>(n)], fd, 1e-5 + 1e-4 * std::abs(fd)) << what << "[" << n << "]";
        }
    };
    check("dQ", pb.q, g.dq);
    check("dK", pb.k, g.dk);
    check("dV", pb.v, g.dv);
}

Case causal_case(const char* name, std::int64_t sq, std::int64_t sk, DType t) {
    Case c;
    c.name = name;
    c.Sq = sq;
    c.Sk = sk;
    c.dtype = t;
    c.spec.causal = true;
    return c;
}

TEST(BackwardShape, Odd113x203) {
    for (DType t : {DType::f32, DType::bf16}) {
        Case c = causal_case("113x203 causal, queries are the last 113 keys", 113, 203, t);
        c.q_pos = positions(113, 90);
        check_backward(c);
    }
    Case c = causal_case("113x203 window(20,30)", 113, 203, DType::f32);
    c.spec.causal = false;
    c.spec.window = Window{20, 30};
    check_backward(c);
}

TEST(BackwardShape, Long1023x1024) {
    Case c = causal_case("1023x1024 causal", 1023, 1024, DType::f32);
    c.Hq = c.Hkv = 1;
    c.q_pos = positions(1023, 1);
    check_backward(c);
}

TEST(BackwardShape, HeadDims) {
    for (std::int64_t d : {32, 59, 128, 256}) {
        Case c = causal_case("head dim", 96, 96, DType::f32);
        c.name.append(" ").append(std::to_string(d));
        c.D = d;
        c.Hq = c.Hkv = 1;
        check_backward(c);
    }
}

TEST(BackwardShape, GroupedQueryAttention8to1) {
    // dK and dV of a kv head sum the contributions of its 8 query heads.
    Case c = causal_case("GQA 16:2", 96, 96, DType::f32);
    c.Hq = 16;
    c.Hkv = 2;
    c.D = 32;
    check_backward(c);
    c.dtype = DType::bf16;
    c.name = "GQA 16:2 bf16";
    check_backward(c);
}

TEST(BackwardShape, MultiQueryAttention) {
    Case c = causal_case("MQA 4:1 alibi", 120, 120, DType::f32);
    c.Hq = 4;
    c.Hkv = 1;
    c.spec.alibi_slopes = alibi_slopes(4);
    check_backward(c);
    c.dtype = DType::bf16;
    c.name = "MQA 4:1 alibi bf16";
    check_backward(c);
}

TEST(BackwardShape, HeadOffsetSelectsAlibiSlopes) {
    Case c = causal_case("head_offset 4 of 6 heads", 96, 96, DType::f32);
    c.Hq = 2;
    c.Hkv = 1;
    c.head_offset = 4;
    c.spec.alibi_slopes = alibi_slopes(6);
    check_backward(c);
}

TEST(BackwardShape, CrossAttentionBatchStridedViews) {
    Case c;
    c.name = "cross 77x180, B=2, padded views";
    c.Sq = 77;
    c.Sk = 180;
    c.B = 2;
    c.pad = 3;
    check_backward(c);
}

TEST(BackwardPositions, ZigzagAndStriped) {
    Case c = causal_case("zigzag chunks (first 48 rows fully masked)", 96, 96, DType::f32);
    c.q_pos = concat(positions(48, 0), positions(48, 336));
    c.k_pos = concat(positions(48, 96), positions(48, 240));
    check_backward(c);
    c.name = "striped r=1,P=4 vs r=3,P=4";
    c.q_pos = positions(96, 1, 4);
    c.k_pos = positions(96, 3, 4);
    c.spec.window = Window{60, 0};
    check_backward(c);
}

TEST(BackwardPositions, UnsortedPositions) {
    // The contract names each row by its global position and does not require them sorted.
    Case c = causal_case("reversed queries, interleaved keys", 96, 96, DType::f32);
    c.q_pos = positions(96, 95, -1);
    for (std::int64_t j = 0; j < 96; ++j) c.k_pos.push_back(j % 2 == 0 ? j / 2 : 95 - j / 2);
    c.spec.window = Window{30, 0};
    check_backward(c);
}

TEST(BackwardMasked, FullyMaskedRowsGiveZeroGradients) {
    // Queries at 0..49 have every key (50..149) in their future; keys at 100..149 are in the future
    // of every query (0..99), so no query attends them.
    Case c = causal_case("masked rows and unattended keys", 100, 100, DType::f32);
    c.k_pos = positions(100, 50);
    check_backward(c);  // includes the exact-zero checks for those rows and keys
    c.name = "all masked";
    c.k_pos = positions(100, 1000);
    check_backward(c);
}

TEST(BackwardScale, HugeSoftmaxScale) {
    // Nearly one-hot rows, where dP - delta is a difference of nearly equal numbers: the gradients stay
    // finite and within the tolerance rule (bf16: by the dot products where the CPU has them).
    for (DType t : {DType::f32, DType::bf16}) {
        Case c = causal_case("scale 1e3", 96, 96, t);
        c.spec.scale = 1e3f;
        const Problem pb(c);
        const FwdOut fwd = reference_forward_out(pb);
        const BwdOut got = run_backward(pb, fwd);
        for (std::int64_t n = 0; n < got.dq.numel(); ++n) ASSERT_TRUE(std::isfinite(got.dq.get(n)));
        check_backward(pb, fwd, got);
    }
}

TEST(BackwardAccumulate, AddsToExistingContents) {
    Case c = causal_case("accumulate", 100, 100, DType::f32);
    c.Hq = 4;
    c.Hkv = 2;
    c.spec.window = Window{30, 0};
    const Problem pb(c);
    const FwdOut fwd = reference_forward_out(pb);
    const BwdOut fresh = run_backward(pb, fwd);

    BwdOut acc{Tensor(DType::f32, fresh.dq.shape()), Tensor(DType::f32, fresh.dk.shape()),
               Tensor(DType::f32, fresh.dv.shape())};
    acc.dq.fill_random(101);
    acc.dk.fill_random(102);
    acc.dv.fill_random(103);
    const auto before_dq = acc.dq.to_f64(), before_dk = acc.dk.to_f64(), before_dv = acc.dv.to_f64();
    kernels::flash_backward_cpu(pb.bwd_params(fwd.o, fwd.lse, acc.dq, acc.dk, acc.dv, 0, true));

    const auto expect_sum = [](const char* what, const Tensor& got, const std::vector<double>& before,
                               const Tensor& grad) {
        std::vector<double> want = before;
        const auto g = grad.to_f64();
        for (std::size_t n = 0; n < want.size(); ++n) want[n] += g[n];
        // One fp32 rounding of the sum, plus the kernel adding partial sums in its own order.
        const double tol = 1e-5 * std::max(1.0, max_abs_finite(want));
        const ErrorAt e = max_abs_err(got.to_f64(), want);
        EXPECT_LE(e.err, tol) << what << ": accumulate=true must add the gradient to the existing contents; worst "
                              << "at " << e.index << ": got " << got.get(static_cast<std::int64_t>(e.index))
                              << ", before " << before[e.index] << " + gradient " << g[e.index];
    };
    expect_sum("dQ", acc.dq, before_dq, fresh.dq);
    expect_sum("dK", acc.dk, before_dk, fresh.dk);
    expect_sum("dV", acc.dv, before_dv, fresh.dv);
}

TEST(BackwardDeterminism, SameBitsForAnyThreadCount) {
    for (DType t : {DType::f32, DType::bf16}) {
        Case c = causal_case("determinism", 200, 200, t);
        c.B = 2;
        c.Hq = 4;
        c.Hkv = 2;
        c.spec.doc_bounds = {0, 90, 200};
        const Problem pb(c);
        const FwdOut fwd = reference_forward_out(pb);
        const BwdOut base = run_backward(pb, fwd, 1);
        for (int threads : {1, 2, 4}) {
            const BwdOut again = run_backward(pb, fwd, threads);
            EXPECT_EQ(again.dq.bytes(), base.dq.bytes()) << dtype_name(t) << " dQ differs with threads=" << threads;
            EXPECT_EQ(again.dk.bytes(), base.dk.bytes()) << dtype_name(t) << " dK differs with threads=" << threads;
            EXPECT_EQ(again.dv.bytes(), base.dv.bytes()) << dtype_name(t) << " dV differs with threads=" << threads;
        }
    }
}

// ---- The instruction sets of a portable build (longattn/cpu_isa.hpp) ---------------------------------

// Runs first in its process (each test case runs alone under ctest): LONGATTN_CPU_ISA, when set, picks
// the kernels, which is how ctest runs the whole kernel suite on each instruction set.
TEST(CpuIsa, TheEnvironmentPicksTheKernelsAndBadNamesAreRefused) {
    const std::vector<std::string> isas = cpu_isas();
    ASSERT_FALSE(isas.empty());
    const char* env = std::getenv("LONGATTN_CPU_ISA");
    EXPECT_EQ(cpu_isa(), env && *env && std::string(env) != "auto" ? std::string(env) : isas.front());
#if LONGATTN_TEST_PORTABLE_X86
    EXPECT_EQ(isas.back(), "sse2");  // x86-64's baseline: every machine runs it
#endif
    try {
        set_cpu_isa("avx9");
        ADD_FAILURE() << "set_cpu_isa accepted avx9";
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("'avx9'"), std::string::npos) << msg;
        for (const std::string& i : isas) EXPECT_NE(msg.find(i), std::string::npos) << msg;
    }
    set_cpu_isa("auto");
    EXPECT_EQ(cpu_isa(), isas.front());
}

// Every instruction set this CPU runs, one after another in one process: the forward and the backward
// of the same calls meet the rule, and the backward keeps its bits for any thread count.
TEST(CpuIsa, EveryInstructionSetMeetsTheRule) {
    const std::string before = cpu_isa();
    for (const std::string& isa : cpu_isas()) {
        SCOPED_TRACE(isa);
        set_cpu_isa(isa);
        ASSERT_EQ(cpu_isa(), isa);
        for (DType t : {DType::f32, DType::bf16}) {
            Case c = causal_case("GQA 4:2 D=59 window", 150, 203, t);
            c.name.append(" on ").append(isa);
            c.q_pos = positions(150, 53);
            c.Hq = 4;
            c.Hkv = 2;
            c.D = 59;  // a vector tail at every width
            c.spec.window = Window{90, 0};
            check_forward(c);
            check_backward(c);
            const Problem pb(c);
            const FwdOut fwd = reference_forward_out(pb);
            const BwdOut one = run_backward(pb, fwd, 1), two = run_backward(pb, fwd, 2);
            EXPECT_EQ(one.dq.bytes(), two.dq.bytes()) << dtype_name(t) << " dQ differs between 1 and 2 threads";
            EXPECT_EQ(one.dk.bytes(), two.dk.bytes()) << dtype_name(t) << " dK differs between 1 and 2 threads";
        }
    }
    set_cpu_isa(before);
}

}  // namespace
}  // namespace longattn::test
