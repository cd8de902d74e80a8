// One case list for every kernel backend this build has (kernels/backend.hpp: the CPU, and CUDA in a
// build with it), each case against the fp64 reference under FlashAttention's rule (testing.hpp).
// Cases of a backend whose device is not visible skip with a message.
//
//   - every pattern kind of the zoo x every storage type the backend stores x head dims: the forward,
//     and the backward on the reference's (O, LSE);
//   - sharp softmax: q and k scaled so that the scores have standard deviation 4, 16 and 64 (|LSE| up
//     to about 300), every pattern family, GQA 4:1. The forward kernel's (O, LSE) feed the backward
//     kernel, as in training, and every output meets the rule against the plain implementation whose
//     backward recomputes P as a textbook softmax (chain_errors);
//   - non-finite inputs, as PyTorch treats them (check_bad_query_row and its siblings in testing.hpp).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/backend.hpp"
#include "testing.hpp"

namespace longattn::test {
namespace {

// What each backend runs: the CPU kernels store fp32, bf16 and fp16 at any head dim; the CUDA kernels
// bf16 and fp16, with tilings for head dims 64 and 128 and a generic path (59).
struct Profile {
    Device device;
    std::vector<DType> zoo_dtypes;
    std::vector<std::int64_t> zoo_dims;
    std::int64_t fwd_n, bwd_n;  // odd lengths, so no tile of any kernel divides them
    std::vector<DType> sharp_dtypes;
    std::int64_t sharp_n, sharp_d;
    std::vector<DType> nonfinite_dtypes;
    std::int64_t nonfinite_n, nonfinite_d;
};

std::vector<Profile> profiles() {
    std::vector<Profile> out{{Device::cpu, {DType::f32, DType::bf16, DType::f16}, {64}, 197, 131,
                              {DType::f32, DType::bf16}, 131, 32, {DType::f32, DType::bf16}, 131, 40}};
    if (kernels::backend(Device::cuda).built)
        out.push_back({Device::cuda, {DType::bf16, DType::f16}, {64, 128, 59}, 197, 197, {DType::bf16, DType::f16}, 197, 64,
                       {DType::bf16, DType::f16}, 197, 64});
    return out;
}

const Profile& profile(Device d) {
    static const std::vector<Profile> all = profiles();
    for (const Profile& p : all)
        if (p.device == d) return p;
    throw std::logic_error("no profile for this device");
}

#define SKIP_UNLESS_AVAILABLE(d)                                                                    \
    if (!kernels::backend(d).available())                                                           \
    GTEST_SKIP() << "no " << kernels::backend(d).name << " device visible: built but not run on this machine"

std::string device_name(Device d) { return kernels::backend(d).name; }

// ---- Every pattern kind x every storage type ------------------------------------------------------

struct ZooParam {
    Device device;
    NamedSpec pattern;
    DType dtype;
    std::int64_t D;
};

std::vector<ZooParam> zoo_params() {
    std::vector<ZooParam> out;
    for (const Profile& pr : profiles())
        for (const auto& p : pattern_zoo(pr.fwd_n, 2))
            for (DType t : pr.zoo_dtypes)
                for (std::int64_t d : pr.zoo_dims) out.push_back({pr.device, p, t, d});
    return out;
}

void PrintTo(const ZooParam& z, std::ostream* os) {
    *os << device_name(z.device) << " " << z.pattern.name << " " << dtype_name(z.dtype) << " D=" << z.D;
}

std::string zoo_name(const ::testing::TestParamInfo<ZooParam>& i) {
    return device_name(i.param.device) + "_" + i.param.pattern.name + "_" + std::string(dtype_name(i.param.dtype)) + "_d" +
           std::to_string(i.param.D);
}

Case zoo_case(const ZooParam& z, std::int64_t n) {
    Case c;
    c.name = z.pattern.name + " D=" + std::to_string(z.D);
    c.Sq = c.Sk = n;
    c.D = z.D;
    c.dtype = z.dtype;
    c.spec = z.pattern.spec;
    return c;
}

class BackendZoo : public ::testing::TestWithParam<ZooParam> {};

TEST_P(BackendZoo, ForwardMatchesReference) {
    const ZooParam& z = GetParam();
    SKIP_UNLESS_AVAILABLE(z.device);
    const Problem pb(zoo_case(z, profile(z.device).fwd_n));
    check_forward(pb, run_forward(pb, 0, z.device));
}

TEST_P(BackendZoo, BackwardMatchesReference) {
    const ZooParam& z = GetParam();
    SKIP_UNLESS_AVAILABLE(z.device);
    const Problem pb(zoo_case(z, profile(z.device).bwd_n));
    const FwdOut fwd = reference_forward_out(pb);
    check_backward(pb, fwd, run_backward(pb, fwd, 0, z.device));
}

INSTANTIATE_TEST_SUITE_P(Zoo, BackendZoo, ::testing::ValuesIn(zoo_params()), zoo_name);

// ---- Sharp softmax ---------------------------------------------------------------------------------

struct SharpBackendParam {
    Device device;
    SharpParam sharp;
};

std::vector<SharpBackendParam> sharp_backend_params() {
    std::vector<SharpBackendParam> out;
    for (const Profile& pr : profiles())
        for (const SharpParam& s : sharp_params(pr.sharp_n, pr.sharp_dtypes)) out.push_back({pr.device, s});
    return out;
}

void PrintTo(const SharpBackendParam& p, std::ostream* os) { *os << device_name(p.device) << " " << sharp_name(p.sharp); }

class BackendSharpSoftmax : public ::testing::TestWithParam<SharpBackendParam> {};

TEST_P(BackendSharpSoftmax, ForwardThenBackwardMeetTheRule) {
    const SharpBackendParam& p = GetParam();
    SKIP_UNLESS_AVAILABLE(p.device);
    const Profile& pr = profile(p.device);
    check_chain(sharp_case(p.sharp, pr.sharp_n, pr.sharp_d), backend_runners(p.device));
}

INSTANTIATE_TEST_SUITE_P(Zoo, BackendSharpSoftmax, ::testing::ValuesIn(sharp_backend_params()),
                         [](const ::testing::TestParamInfo<SharpBackendParam>& i) {
                             return device_name(i.param.device) + "_" + sharp_name(i.param.sharp);
                         });

// ---- Non-finite inputs -------------------------------------------------------------------------------

class BackendNonFinite : public ::testing::TestWithParam<Device> {};

TEST_P(BackendNonFinite, BadQueryRowGivesNanInThatRowOnly) {
    SKIP_UNLESS_AVAILABLE(GetParam());
    const Profile& pr = profile(GetParam());
    check_bad_query_row(backend_runners(GetParam()), pr.nonfinite_dtypes, pr.nonfinite_n, pr.nonfinite_d);
}

TEST_P(BackendNonFinite, NanKeyReachesExactlyTheRowsThatMayAttendIt) {
    SKIP_UNLESS_AVAILABLE(GetParam());
    const Profile& pr = profile(GetParam());
    check_nan_key(backend_runners(GetParam()), pr.nonfinite_dtypes, pr.nonfinite_n, pr.nonfinite_d);
}

TEST_P(BackendNonFinite, NanValueMakesTheRowsThatAttendItNanWithTheirLseIntact) {
    SKIP_UNLESS_AVAILABLE(GetParam());
    const Profile& pr = profile(GetParam());
    check_nan_value(backend_runners(GetParam()), pr.nonfinite_dtypes[0], pr.nonfinite_n, pr.nonfinite_d);
}

TEST_P(BackendNonFinite, FullyMaskedRowsStayZeroWithANanQuery) {
    SKIP_UNLESS_AVAILABLE(GetParam());
    const Profile& pr = profile(GetParam());
    check_masked_row_with_nan_query(backend_runners(GetParam()), pr.nonfinite_dtypes[0], pr.nonfinite_n, pr.nonfinite_d);
}

TEST_P(BackendNonFinite, AccumulatingOntoANanPartialStaysNan) {
    SKIP_UNLESS_AVAILABLE(GetParam());
    const Profile& pr = profile(GetParam());
    Case c;
    c.Sq = c.Sk = pr.nonfinite_n;
    c.dtype = pr.nonfinite_dtypes[0];
    c.o_dtype = DType::f32;  // an accumulating call needs an fp32 O
    const Problem pb(c);
    FwdOut part = run_forward(pb, 0, GetParam());
    part.lse[lse_index(0, 0, 3, c.Hq, c.Sq)] = std::numeric_limits<float>::quiet_NaN();
    forward_on(GetParam(), pb, part, true);
    EXPECT_TRUE(std::isnan(part.lse[lse_index(0, 0, 3, c.Hq, c.Sq)]));
    for (std::int64_t d = 0; d < c.D; ++d) EXPECT_TRUE(std::isnan(part.o.get(3 * c.Hq * c.D + d))) << d;
    EXPECT_TRUE(std::isfinite(part.lse[lse_index(0, 0, 4, c.Hq, c.Sq)]));
}

std::vector<Device> devices() {
    std::vector<Device> out;
    for (const Profile& p : profiles()) out.push_back(p.device);
    return out;
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendNonFinite, ::testing::ValuesIn(devices()),
                         [](const ::testing::TestParamInfo<Device>& i) { return device_name(i.param); });

}  // namespace
}  // namespace longattn::test
