// validate(): every malformed field is rejected with longattn::Error whose message names the field,
// valid problems (including empty ones) pass, and the kernels themselves reject bad input instead of
// reading out of bounds.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "longattn/error.hpp"
#include "testing.hpp"

namespace longattn::test {
namespace {

// Runs f and expects longattn::Error whose message contains `field`.
void expect_error_naming(const std::function<void()>& f, const std::string& field) {
    try {
        f();
    } catch (const Error& e) {
        // validate() writes "field: what is wrong"; the colon keeps "q" from matching "q_pos".
        EXPECT_NE(std::string(e.what()).find(field + ":"), std::string::npos)
            << "message does not name " << field << ": " << e.what();
        return;
    } catch (const std::exception& e) {
        ADD_FAILURE() << "expected longattn::Error naming " << field << ", got another exception: " << e.what();
        return;
    }
    ADD_FAILURE() << "expected longattn::Error naming " << field << ", nothing was thrown";
}

struct Fixture {
    Fixture() : pb(make_case()), o(DType::f32, {1, 8, 4, 16}), lse(32, 0.0f), dq(DType::f32, {1, 8, 4, 16}),
                dk(DType::f32, {1, 8, 2, 16}), dv(DType::f32, {1, 8, 2, 16}) {}
    static Case make_case() {
        Case c;
        c.Sq = c.Sk = 8;
        c.Hq = 4;
        c.Hkv = 2;
        c.D = 16;
        return c;
    }
    FwdParams fwd() const { return pb.fwd_params(o, lse.data()); }
    BwdParams bwd() const { return pb.bwd_params(o, lse, dq, dk, dv); }

    Problem pb;
    Tensor o;
    mutable std::vector<float> lse;  // written by the forward kernel
    Tensor dq, dk, dv;
};

TEST(Validate, AcceptsValidProblems) {
    const Fixture f;
    EXPECT_NO_THROW(kernels::validate(f.fwd()));
    EXPECT_NO_THROW(kernels::validate(f.bwd()));
    // No keys at all: k_pos may be null.
    auto p = f.fwd();
    p.k.shape[1] = p.v.shape[1] = 0;
    p.k_pos = nullptr;
    EXPECT_NO_THROW(kernels::validate(p));
}

TEST(Validate, ForwardNamesTheBadField) {
    const Fixture f;
    const auto bad = [&](auto edit, const char* field) {
        FwdParams p = f.fwd();
        edit(p);
        SCOPED_TRACE(field);
        expect_error_naming([&] { kernels::validate(p); }, field);
        // The kernel must reject it too rather than read out of bounds.
        expect_error_naming([&] { kernels::flash_forward_cpu(p); }, field);
    };
    bad([](FwdParams& p) { p.k.shape[2] = p.v.shape[2] = 3; }, "q.shape[2]");  // 4 heads, 3 kv heads
    bad([](FwdParams& p) { p.k.shape[3] = p.v.shape[3] = 8; }, "k.shape[3]");  // head dim 8 vs 16
    bad([](FwdParams& p) { p.v.shape[1] = 7; }, "v.shape[1]");
    bad([](FwdParams& p) { p.k.shape[0] = 2; p.v.shape[0] = 2; }, "k.shape[0]");
    bad([](FwdParams& p) { p.o.shape[1] = 9; }, "o.shape[1]");
    bad([](FwdParams& p) { p.q.data = nullptr; }, "q.data");
    bad([](FwdParams& p) { p.v.data = nullptr; }, "v.data");
    bad([](FwdParams& p) { p.lse = nullptr; }, "lse");
    bad([](FwdParams& p) { p.q_pos = nullptr; }, "q_pos");
    bad([](FwdParams& p) { p.k_pos = nullptr; }, "k_pos");
    bad([](FwdParams& p) { p.pattern = nullptr; }, "pattern");
    bad([](FwdParams& p) { p.q.rank = 3; }, "q");
    bad([](FwdParams& p) { p.k.stride[3] = 2; }, "k.stride[3]");
    bad([](FwdParams& p) { p.threads = -1; }, "threads");
    bad([](FwdParams& p) { p.head_offset = -1; }, "head_offset");
}

TEST(Validate, HeadDimLimitAndAlibiSlopes) {
    const Fixture f;
    FwdParams p = f.fwd();
    p.q.shape[3] = p.k.shape[3] = p.v.shape[3] = p.o.shape[3] = 257;
    expect_error_naming([&] { kernels::validate(p); }, "q.shape[3]");

    PatternSpec spec;
    spec.alibi_slopes = {0.5f, 0.25f};  // 2 slopes for 4 query heads
    const Pattern pattern(spec);
    p = f.fwd();
    p.pattern = &pattern;
    expect_error_naming([&] { kernels::validate(p); }, "pattern.alibi_slopes");

    // 4 slopes cover the 4 local heads only with head_offset 0.
    spec.alibi_slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
    const Pattern four(spec);
    p.pattern = &four;
    EXPECT_NO_THROW(kernels::validate(p));
    p.head_offset = 1;
    expect_error_naming([&] { kernels::validate(p); }, "pattern.alibi_slopes");
}

TEST(Validate, BackwardNamesTheBadField) {
    const Fixture f;
    const Tensor dq_bf16(DType::bf16, {1, 8, 4, 16});
    const auto bad = [&](auto edit, const char* field) {
        BwdParams p = f.bwd();
        edit(p);
        SCOPED_TRACE(field);
        expect_error_naming([&] { kernels::validate(p); }, field);
        expect_error_naming([&] { kernels::flash_backward_cpu(p); }, field);
    };
    bad([](BwdParams& p) { p.k.shape[2] = p.v.shape[2] = 3; }, "q.shape[2]");
    bad([](BwdParams& p) { p.dout.shape[2] = 2; }, "dout.shape[2]");
    bad([](BwdParams& p) { p.dk.shape[1] = 9; }, "dk.shape[1]");
    bad([](BwdParams& p) { p.dv.shape[2] = 4; }, "dv.shape[2]");
    bad([](BwdParams& p) { p.dq.shape[3] = 15; }, "dq.shape[3]");
    bad([&](BwdParams& p) { p.dq = dq_bf16.view(); }, "dq/dk/dv");
    bad([](BwdParams& p) { p.o.data = nullptr; }, "o.data");
    bad([](BwdParams& p) { p.lse = nullptr; }, "lse");
    bad([](BwdParams& p) { p.pattern = nullptr; }, "pattern");
}

}  // namespace
}  // namespace longattn::test
