// The C interface (longattn.h) in one process, linked against the shared library as a consumer is:
// every kind of the pattern descriptor gives the C++ API's bits, strided DLPack views give the compact
// result, and bad arguments get LA_ERR_ARGUMENT with a message naming them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "capi/longattn.h"
#include "comm/self_communicator.hpp"
#include "longattn/context.hpp"

namespace {

using namespace longattn;

constexpr std::int64_t kN = 300, kHq = 2, kHkv = 1, kD = 16;

std::vector<float> filled(std::size_t n, int which) {
    std::vector<float> x(n);
    for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>(0.6 * std::sin(0.013 * double(i) * (which + 1) + which));
    return x;
}

DLTensor tensor(void* data, std::vector<std::int64_t>& shape, std::int64_t* strides = nullptr) {
    DLTensor t{};
    t.data = data;
    t.device.device_type = kDLCPU;
    t.ndim = static_cast<int>(shape.size());
    t.dtype = DLDataType{kDLFloat, 32, 1};
    t.shape = shape.data();
    t.strides = strides;
    return t;
}

struct Problem {
    std::vector<float> q = filled(kN * kHq * kD, 0), k = filled(kN * kHkv * kD, 1), v = filled(kN * kHkv * kD, 2);
    std::vector<float> o = std::vector<float>(kN * kHq * kD), lse = std::vector<float>(kHq * kN);
    std::vector<std::int64_t> pos;
    std::vector<std::int64_t> sq{1, kN, kHq, kD}, skv{1, kN, kHkv, kD}, sl{1, kHq, kN};
    Problem() {
        for (std::int64_t i = 0; i < kN; ++i) pos.push_back(i);
    }
};

// O and LSE through the C interface.
la_status c_forward(la_context* ctx, const la_pattern& pat, Problem& p) {
    DLTensor q = tensor(p.q.data(), p.sq), k = tensor(p.k.data(), p.skv), v = tensor(p.v.data(), p.skv),
             o = tensor(p.o.data(), p.sq), l = tensor(p.lse.data(), p.sl);
    return la_forward(ctx, &pat, p.pos.data(), &q, &k, &v, &o, &l);
}

// The same through the C++ API.
void cpp_forward(const PatternSpec& spec, Problem& p) {
    comm::SelfCommunicator self;
    Context ctx(self);
    const Pattern pat(spec);
    DistForwardArgs a;
    a.q = contiguous_view(p.q.data(), DType::f32, 1, kN, kHq, kD);
    a.k = contiguous_view(p.k.data(), DType::f32, 1, kN, kHkv, kD);
    a.v = contiguous_view(p.v.data(), DType::f32, 1, kN, kHkv, kD);
    a.o = contiguous_view(p.o.data(), DType::f32, 1, kN, kHq, kD);
    a.lse = p.lse.data();
    a.pos = p.pos.data();
    a.pattern = &pat;
    ctx.forward(a);
}

struct Local {
    la_context* ctx = nullptr;
    Local() {
        la_options opt;
        la_options_default(&opt);
        opt.threads = 1;
        EXPECT_EQ(la_context_create_local(&opt, &ctx), LA_OK) << la_last_error();
    }
    ~Local() { la_context_destroy(ctx); }
};

TEST(CApi, EveryPatternKindGivesTheCppApisBits) {
    const std::int64_t docs[] = {0, 90, 300}, globals[] = {7, 150};
    const std::uint8_t mask[] = {1, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 1, 1, 1};  // 4 x 4 blocks of 80
    const float slopes[] = {0.25f, 0.0625f};
    // (what the C descriptor sets, what the C++ spec sets)
    std::vector<std::pair<std::function<void(la_pattern&)>, std::function<void(PatternSpec&)>>> kinds = {
        {[](la_pattern& p) { p.causal = 1; }, [](PatternSpec& s) { s.causal = true; }},
        {[](la_pattern& p) { p.has_window = 1, p.window_left = 40, p.window_right = 5; },
         [](PatternSpec& s) { s.window = Window{40, 5}; }},
        {[&](la_pattern& p) { p.causal = 1, p.doc_bounds = docs, p.n_doc_bounds = 3; },
         [&](PatternSpec& s) { s.causal = true, s.doc_bounds = {0, 90, 300}; }},
        {[&](la_pattern& p) { p.has_window = 1, p.window_left = 10, p.window_right = 0, p.global_first = 3,
                              p.global_list = globals, p.n_global_list = 2; },
         [](PatternSpec& s) { s.window = Window{10, 0}, s.global_first = 3, s.global_list = {7, 150}; }},
        {[&](la_pattern& p) { p.block = 80, p.block_mask = mask, p.block_mask_rows = 4, p.block_mask_cols = 4; },
         [&](PatternSpec& s) { s.block = 80, s.block_mask.assign(mask, mask + 16), s.block_mask_rows = s.block_mask_cols = 4; }},
        {[](la_pattern& p) { p.causal = 1, p.block = 32, p.stride = 3, p.random_blocks = 2, p.random_seed = 9, p.seq_len = kN; },
         [](PatternSpec& s) { s.causal = true, s.block = 32, s.stride = 3, s.random_blocks = 2, s.random_seed = 9, s.seq_len = kN; }},
        {[&](la_pattern& p) { p.causal = 1, p.alibi_slopes = slopes, p.n_alibi_slopes = 2, p.softcap = 20, p.scale = 0.3f; },
         [&](PatternSpec& s) { s.causal = true, s.alibi_slopes = {0.25f, 0.0625f}, s.softcap = 20, s.scale = 0.3f; }},
    };
    Local c;
    for (std::size_t i = 0; i < kinds.size(); ++i) {
        SCOPED_TRACE("kind " + std::to_string(i));
        la_pattern pat;
        la_pattern_default(&pat);
        kinds[i].first(pat);
        PatternSpec spec;
        kinds[i].second(spec);
        Problem a, b;
        ASSERT_EQ(c_forward(c.ctx, pat, a), LA_OK) << la_last_error();
        EXPECT_STREQ(la_last_error(), "");
        cpp_forward(spec, b);
        EXPECT_EQ(std::memcmp(a.o.data(), b.o.data(), a.o.size() * 4), 0);
        EXPECT_EQ(std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * 4), 0);
    }
    std::int64_t hits = -1, misses = -1, plans = -1;
    ASSERT_EQ(la_cache_stats(c.ctx, &hits, &misses, nullptr, &plans), LA_OK);
    EXPECT_EQ(misses, static_cast<std::int64_t>(kinds.size()));  // every pattern is a plan of its own
    EXPECT_EQ(hits, 0);
    EXPECT_EQ(plans, 7);
}

TEST(CApi, StridedViewsGiveTheCompactResult) {
    la_pattern pat;
    la_pattern_default(&pat);
    pat.causal = 1;
    Local c;
    Problem compact, strided;
    ASSERT_EQ(c_forward(c.ctx, pat, compact), LA_OK) << la_last_error();
    // Q and O held heads-major, [B, H, S, D] in memory, described as [B, S, H, D] with strides.
    std::vector<float> qh(compact.q.size()), oh(compact.o.size());
    for (std::int64_t s = 0; s < kN; ++s)
        for (std::int64_t h = 0; h < kHq; ++h)
            for (std::int64_t d = 0; d < kD; ++d) qh[(h * kN + s) * kD + d] = compact.q[(s * kHq + h) * kD + d];
    std::int64_t st[4] = {kHq * kN * kD, kD, kN * kD, 1};
    DLTensor q = tensor(qh.data(), strided.sq, st), k = tensor(strided.k.data(), strided.skv),
             v = tensor(strided.v.data(), strided.skv), o = tensor(oh.data(), strided.sq, st),
             l = tensor(strided.lse.data(), strided.sl);
    ASSERT_EQ(la_forward(c.ctx, &pat, strided.pos.data(), &q, &k, &v, &o, &l), LA_OK) << la_last_error();
    double worst = 0;
    for (std::int64_t s = 0; s < kN; ++s)
        for (std::int64_t h = 0; h < kHq; ++h)
            for (std::int64_t d = 0; d < kD; ++d)
                worst = std::max(worst, double(std::fabs(oh[(h * kN + s) * kD + d] - compact.o[(s * kHq + h) * kD + d])));
    EXPECT_EQ(worst, 0.0);
    EXPECT_EQ(strided.lse, compact.lse);
}

TEST(CApi, BadArgumentsNameTheArgument) {
    Local c;
    la_pattern pat;
    la_pattern_default(&pat);
    auto refused = [&](const std::function<la_status()>& call, const std::string& message) {
        EXPECT_EQ(call(), LA_ERR_ARGUMENT) << message;
        EXPECT_NE(std::string(la_last_error()).find(message), std::string::npos) << la_last_error();
    };
    Problem p;
    DLTensor q = tensor(p.q.data(), p.sq), k = tensor(p.k.data(), p.skv), v = tensor(p.v.data(), p.skv),
             o = tensor(p.o.data(), p.sq), l = tensor(p.lse.data(), p.sl);
    DLTensor bad = q;
    bad.dtype = DLDataType{kDLInt, 32, 1};
    refused([&] { return la_forward(c.ctx, &pat, p.pos.data(), &bad, &k, &v, &o, &l); }, "q: must be float32, bfloat16 or float16");
    bad = q;
    bad.ndim = 3;
    refused([&] { return la_forward(c.ctx, &pat, p.pos.data(), &bad, &k, &v, &o, &l); }, "q: must be a 4-d tensor");
    bad = q;
    bad.device.device_type = kDLROCM;
    refused([&] { return la_forward(c.ctx, &pat, p.pos.data(), &bad, &k, &v, &o, &l); }, "q: must be in host");
    std::int64_t wrong[3] = {kHq * kN, 1, kHq};  // [B, S, Hq] order
    DLTensor lt = tensor(p.lse.data(), p.sl, wrong);
    refused([&] { return la_forward(c.ctx, &pat, p.pos.data(), &q, &k, &v, &o, &lt); }, "lse: must be compact");
    refused([&] { return la_forward(c.ctx, nullptr, p.pos.data(), &q, &k, &v, &o, &l); }, "pattern: is NULL");
    refused([&] { return la_forward(c.ctx, &pat, nullptr, &q, &k, &v, &o, &l); }, "pos: null for 300 local rows");
    la_pattern w = pat;
    w.has_window = 1, w.window_left = -7;
    refused([&] { return la_forward(c.ctx, &w, p.pos.data(), &q, &k, &v, &o, &l); }, "pattern.window.left");
    DLTensor k3 = k;
    std::vector<std::int64_t> s3{1, kN, 3, kD};
    k3.shape = s3.data();
    refused([&] { return la_forward(c.ctx, &pat, p.pos.data(), &q, &k3, &k3, &o, &l); }, "kv heads");
    la_options opt;
    la_options_default(&opt);
    opt.max_plans = 0;
    la_context* none = nullptr;
    refused([&] { return la_context_create_local(&opt, &none); }, "max_plans: must be >= 1");
    EXPECT_EQ(none, nullptr);
    refused([&] { return la_forward(nullptr, &pat, p.pos.data(), &q, &k, &v, &o, &l); }, "ctx: is NULL");
    // A good call after the bad ones works and clears the message.
    EXPECT_EQ(la_forward(c.ctx, &pat, p.pos.data(), &q, &k, &v, &o, &l), LA_OK) << la_last_error();
    EXPECT_STREQ(la_last_error(), "");
}

TEST(CApi, CpuInstructionSet) {
    const std::string first = la_cpu_isa();
    ASSERT_FALSE(first.empty()) << la_last_error();
    EXPECT_EQ(la_set_cpu_isa("avx9"), LA_ERR_ARGUMENT);
    const std::string msg = la_last_error();
    EXPECT_NE(msg.find("'avx9'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(first), std::string::npos) << msg;  // it names the choices
    EXPECT_EQ(la_set_cpu_isa(nullptr), LA_ERR_ARGUMENT);
    ASSERT_EQ(la_set_cpu_isa(first.c_str()), LA_OK);
    EXPECT_EQ(std::string(la_cpu_isa()), first);
    ASSERT_EQ(la_set_cpu_isa("auto"), LA_OK);
    if (std::getenv("LONGATTN_CPU_ISA") == nullptr) {
        EXPECT_EQ(std::string(la_cpu_isa()), first);  // the best
    }
}

TEST(CApi, VersionAndLayouts) {
    EXPECT_EQ(std::string(la_version()), "0.1.0");
    EXPECT_EQ(la_version_number(), 100);
    std::int64_t n = 0, pos[4];
    ASSERT_EQ(la_layout_positions(LA_ZIGZAG, 8, 2, 0, nullptr, &n), LA_OK);
    EXPECT_EQ(n, 4);
    ASSERT_EQ(la_layout_positions(LA_ZIGZAG, 8, 2, 0, pos, &n), LA_OK);
    EXPECT_EQ(std::vector<std::int64_t>(pos, pos + 4), (std::vector<std::int64_t>{0, 1, 6, 7}));
    EXPECT_EQ(la_layout_positions(LA_STRIPED, 8, 2, 2, pos, &n), LA_ERR_ARGUMENT);
    EXPECT_NE(std::string(la_last_error()).find("rank: must be in [0, 2)"), std::string::npos) << la_last_error();
}

}  // namespace
