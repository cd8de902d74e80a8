// Precision at sharp softmax and non-finite inputs, on the CPU kernels (the gpu tests run the same
// checks on the CUDA kernels).
//
// Sharp softmax: q and k scaled so that the scores have standard deviation 4, 16 and 64 (|LSE| up to
// about 300), every pattern family, GQA 4:1, fp32 and bf16 storage. The forward kernel's (O, LSE) feed
// the backward kernel, as in training, and every output meets FlashAttention's rule against the plain
// implementation whose backward recomputes P as a textbook softmax (testing.hpp, chain_errors).
//
// Non-finite inputs, as PyTorch treats them: see check_bad_query_row and its siblings in testing.hpp.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "testing.hpp"

namespace longattn::test {
namespace {

constexpr std::int64_t kN = 131;

class SharpSoftmax : public ::testing::TestWithParam<SharpParam> {};

TEST_P(SharpSoftmax, ForwardThenBackwardMeetTheRule) { check_chain(sharp_case(GetParam(), kN, 32), cpu_runners()); }

INSTANTIATE_TEST_SUITE_P(Zoo, SharpSoftmax, ::testing::ValuesIn(sharp_params(kN, {DType::f32, DType::bf16})),
                         [](const ::testing::TestParamInfo<SharpParam>& i) { return sharp_name(i.param); });

TEST(NonFinite, BadQueryRowGivesNanInThatRowOnly) { check_bad_query_row(cpu_runners(), {DType::f32, DType::bf16}, kN, 40); }

TEST(NonFinite, NanKeyReachesExactlyTheRowsThatMayAttendIt) { check_nan_key(cpu_runners(), {DType::f32, DType::bf16}, kN, 40); }

TEST(NonFinite, NanValueMakesTheRowsThatAttendItNanWithTheirLseIntact) { check_nan_value(cpu_runners(), DType::f32, kN, 40); }

TEST(NonFinite, FullyMaskedRowsStayZeroWithANanQuery) { check_masked_row_with_nan_query(cpu_runners(), DType::f32, kN, 40); }

TEST(NonFinite, AccumulatingOntoANanPartialStaysNan) {
    Case c;
    c.Sq = c.Sk = kN;
    const Problem pb(c);
    FwdOut part = run_forward(pb);
    part.lse[lse_index(0, 0, 3, c.Hq, c.Sq)] = std::numeric_limits<float>::quiet_NaN();
    kernels::FwdParams p = pb.fwd_params(part.o, part.lse.data());
    p.accumulate = true;
    kernels::flash_forward_cpu(p);
    EXPECT_TRUE(std::isnan(part.lse[lse_index(0, 0, 3, c.Hq, c.Sq)]));
    for (std::int64_t d = 0; d < c.D; ++d) EXPECT_TRUE(std::isnan(part.o.get(3 * c.Hq * c.D + d))) << d;
    EXPECT_TRUE(std::isfinite(part.lse[lse_index(0, 0, 4, c.Hq, c.Sq)]));
}

}  // namespace
}  // namespace longattn::test
