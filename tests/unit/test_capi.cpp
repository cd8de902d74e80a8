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
#include "longattn/cost_model.hpp"
#include "longattn/kv_cache.hpp"

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

// Decoding through the C interface: a cache prefilled from the problem's K and V rows, then two steps
// appending two tokens each and one replay, against the C++ API's bits and an fp64 reference.
TEST(CApi, KvCacheAndDecodeStepGiveTheCppApisBits) {
    Local c;
    la_pattern pat;
    la_pattern_default(&pat);
    pat.causal = 1;
    la_kv_cache_options co;
    la_kv_cache_options_default(&co);
    co.capacity = kN + 8;
    co.kv_heads = kHkv;
    co.head_dim = kD;
    co.dtype = DLDataType{kDLFloat, 32, 1};
    co.page_tokens = 32;
    la_kv_cache* cache = nullptr;
    ASSERT_EQ(la_kv_cache_create(c.ctx, &co, &cache), LA_OK) << la_last_error();
    Problem p;
    const std::int64_t L = kN - 4, T = 2;  // rows [0, L) prefill, [L, kN) two steps of T
    std::vector<std::int64_t> sp{1, L, kHkv, kD};
    DLTensor k = tensor(p.k.data(), sp), v = tensor(p.v.data(), sp);
    ASSERT_EQ(la_kv_cache_write(cache, 0, p.pos.data(), L, &k, &v, 0), LA_OK) << la_last_error();
    ASSERT_EQ(la_kv_cache_sync_lengths(cache), LA_OK);

    KvCacheOptions o;
    o.capacity = kN + 8, o.kv_heads = kHkv, o.head_dim = kD, o.dtype = DType::f32, o.page_tokens = 32;
    KvCache cpp(nullptr, o);
    cpp.write(0, p.pos.data(), L, contiguous_view(p.k.data(), DType::f32, 1, L, kHkv, kD),
              contiguous_view(p.v.data(), DType::f32, 1, L, kHkv, kD));
    cpp.sync_lengths();
    PatternSpec cs;
    cs.causal = true;
    const Pattern causal(cs);

    std::vector<std::int64_t> sq{1, T, kHq, kD}, skv{1, T, kHkv, kD}, sl{1, kHq, T};
    std::vector<float> oc(static_cast<std::size_t>(T * kHq * kD)), lc(static_cast<std::size_t>(kHq * T));
    std::vector<float> ox(oc.size()), lx(lc.size());
    double worst = 0;
    for (int step = 0; step < 3; ++step) {
        const std::int64_t r0 = step < 2 ? L + step * T : kN - T;  // the replay sits at the last T rows
        float* qp = p.q.data() + r0 * kHq * kD;
        float* kp = p.k.data() + r0 * kHkv * kD;
        float* vp = p.v.data() + r0 * kHkv * kD;
        DLTensor tq = tensor(qp, sq), tk = tensor(kp, skv), tv = tensor(vp, skv), to = tensor(oc.data(), sq),
                 tl = tensor(lc.data(), sl);
        const bool append = step < 2;
        ASSERT_EQ(la_decode_step(cache, &pat, &tq, append ? &tk : nullptr, append ? &tv : nullptr, &to, &tl,
                                 LA_COMBINE_ALLREDUCE, 1),
                  LA_OK)
            << la_last_error();
        DecodeArgs a;
        a.q = contiguous_view(qp, DType::f32, 1, T, kHq, kD);
        if (append) {
            a.k = contiguous_view(kp, DType::f32, 1, T, kHkv, kD);
            a.v = contiguous_view(vp, DType::f32, 1, T, kHkv, kD);
        }
        a.pattern = &causal;
        a.o = ox.data();
        a.lse = lx.data();
        DecodeOptions dopt;
        dopt.combine = DecodeCombine::allreduce;
        dopt.threads = 1;
        decode_step(cpp, a, dopt);
        EXPECT_EQ(oc, ox) << "step " << step;
        EXPECT_EQ(lc, lx) << "step " << step;
        // fp64: query row r0 + i of head h over keys [0, r0 + i].
        for (std::int64_t i = 0; i < T; ++i)
            for (std::int64_t h = 0; h < kHq; ++h) {
                const std::int64_t qi = r0 + i, kh = h / (kHq / kHkv);
                std::vector<double> w(static_cast<std::size_t>(qi + 1));
                double mx = -1e300, sum = 0;
                for (std::int64_t j = 0; j <= qi; ++j) {
                    double s = 0;
                    for (std::int64_t d = 0; d < kD; ++d)
                        s += double(p.q[static_cast<std::size_t>((qi * kHq + h) * kD + d)]) *
                             p.k[static_cast<std::size_t>((j * kHkv + kh) * kD + d)];
                    w[static_cast<std::size_t>(j)] = s / std::sqrt(double(kD));
                    mx = std::max(mx, w[static_cast<std::size_t>(j)]);
                }
                for (double& x : w) sum += (x = std::exp(x - mx));
                worst = std::max(worst, std::fabs(lc[static_cast<std::size_t>(h * T + i)] - (mx + std::log(sum))));
                for (std::int64_t d = 0; d < kD; ++d) {
                    double ref = 0;
                    for (std::int64_t j = 0; j <= qi; ++j)
                        ref += w[static_cast<std::size_t>(j)] * p.v[static_cast<std::size_t>((j * kHkv + kh) * kD + d)];
                    worst = std::max(worst, std::fabs(oc[static_cast<std::size_t>((i * kHq + h) * kD + d)] - ref / sum));
                }
            }
    }
    EXPECT_LT(worst, 2e-6);  // fp32 sums of a few hundred terms of order 1
    std::int64_t len = 0, used = 0, total = 0, held = 0;
    std::uint64_t bytes = 0;
    ASSERT_EQ(la_kv_cache_length(cache, 0, &len), LA_OK);
    ASSERT_EQ(la_kv_cache_stats(cache, &used, &total, &held, &bytes), LA_OK);
    EXPECT_EQ(len, kN);
    EXPECT_EQ(held, kN);
    EXPECT_EQ(used, (kN + 31) / 32);
    EXPECT_EQ(bytes, cpp.bytes());
    EXPECT_EQ(total, cpp.pages_total());

    // Bad arguments name themselves and leave the cache as it was.
    auto refused = [&](const std::function<la_status()>& call, const std::string& message) {
        EXPECT_EQ(call(), LA_ERR_ARGUMENT) << message;
        EXPECT_NE(std::string(la_last_error()).find(message), std::string::npos) << la_last_error();
    };
    DLTensor tq = tensor(p.q.data(), sq), tk = tensor(p.k.data(), skv), to = tensor(oc.data(), sq), tl = tensor(lc.data(), sl);
    refused([&] { return la_decode_step(cache, &pat, &tq, &tk, nullptr, &to, &tl, LA_COMBINE_ALLGATHER, 1); },
            "k and v must both be given");
    std::vector<std::int64_t> s_wrong{1, T, kHq, kD + 1};
    DLTensor ow = tensor(oc.data(), s_wrong);
    refused([&] { return la_decode_step(cache, &pat, &tq, nullptr, nullptr, &ow, &tl, LA_COMBINE_ALLGATHER, 1); },
            "o: must be [1, 2, 2, 16] like q");
    std::vector<std::int64_t> sl_wrong{1, kHq, T + 1};
    DLTensor lw = tensor(lc.data(), sl_wrong);
    refused([&] { return la_decode_step(cache, &pat, &tq, nullptr, nullptr, &to, &lw, LA_COMBINE_ALLGATHER, 1); },
            "lse: must be [1, 2, 2]");
    refused([&] { return la_decode_step(cache, &pat, &tq, nullptr, nullptr, &to, &tl, static_cast<la_decode_combine>(7), 1); },
            "combine: must be LA_COMBINE_ALLGATHER or LA_COMBINE_ALLREDUCE");
    std::vector<std::int64_t> s_big{1, 9, kHq, kD}, s_bigkv{1, 9, kHkv, kD}, s_bigl{1, kHq, 9};
    std::vector<float> qb(9 * kHq * kD), kb(9 * kHkv * kD), ob(qb.size()), lb(9 * kHq);
    DLTensor qbt = tensor(qb.data(), s_big), kbt = tensor(kb.data(), s_bigkv), obt = tensor(ob.data(), s_big),
             lbt = tensor(lb.data(), s_bigl);
    refused([&] { return la_decode_step(cache, &pat, &qbt, &kbt, &kbt, &obt, &lbt, LA_COMBINE_ALLGATHER, 1); },
            "do not fit");  // 300 + 9 > the capacity of 308
    ASSERT_EQ(la_kv_cache_length(cache, 0, &len), LA_OK);
    EXPECT_EQ(len, kN);
    la_kv_cache_options bad_opt = co;
    bad_opt.page_tokens = 24;
    la_kv_cache* none = nullptr;
    refused([&] { return la_kv_cache_create(c.ctx, &bad_opt, &none); }, "page-tokens: must be a positive multiple of 16");
    bad_opt = co;
    bad_opt.dtype = DLDataType{kDLInt, 8, 1};
    refused([&] { return la_kv_cache_create(c.ctx, &bad_opt, &none); }, "dtype: must be float32, bfloat16 or float16");
    EXPECT_EQ(none, nullptr);
    refused([&] { return la_kv_cache_write(cache, 1, p.pos.data(), 1, &k, &v, 0); }, "sequence index must be in [0, 1)");
    refused([&] { return la_decode_step(nullptr, &pat, &tq, nullptr, nullptr, &to, &tl, LA_COMBINE_ALLGATHER, 1); },
            "cache: is NULL");
    la_kv_cache_destroy(cache);
    la_kv_cache_destroy(nullptr);
}

// LA_AUTO: refused by name until a cluster file is set (and a fixed strategy refuses one); then the
// plans take the cost model's pick, which la_context_strategy reports, with the fixed strategy's bits.
TEST(CApi, AutoStrategyTakesTheCostModelsPick) {
    la_options opt;
    la_options_default(&opt);
    opt.threads = 1;
    opt.strategy = LA_AUTO;
    la_context* ctx = nullptr;
    ASSERT_EQ(la_context_create_local(&opt, &ctx), LA_OK) << la_last_error();
    la_pattern pat;
    la_pattern_default(&pat);
    pat.causal = 1;
    Problem p;
    la_strategy st = LA_AUTO;
    EXPECT_EQ(la_context_strategy(ctx, &st, nullptr), LA_ERR_ARGUMENT);
    EXPECT_EQ(c_forward(ctx, pat, p), LA_ERR_ARGUMENT);
    EXPECT_NE(std::string(la_last_error()).find("strategy: LA_AUTO picks by a cluster file"), std::string::npos) << la_last_error();
    EXPECT_EQ(la_context_set_cluster(ctx, "no/such/cluster.ini", 1), LA_ERR_ARGUMENT);
    EXPECT_NE(std::string(la_last_error()).find("cannot read 'no/such/cluster.ini'"), std::string::npos) << la_last_error();
    ASSERT_EQ(la_context_set_cluster(ctx, LONGATTN_SOURCE_DIR "/configs/clusters/h200-node.ini", 1), LA_OK) << la_last_error();
    ASSERT_EQ(c_forward(ctx, pat, p), LA_OK) << la_last_error();
    int degree = 0;
    ASSERT_EQ(la_context_strategy(ctx, &st, &degree), LA_OK) << la_last_error();
    EXPECT_EQ(st, LA_RING);  // one rank: every strategy is the kernels alone; the first of the ties
    EXPECT_EQ(degree, 1);
    Problem fixed;
    Local plain;
    ASSERT_EQ(c_forward(plain.ctx, pat, fixed), LA_OK) << la_last_error();
    EXPECT_EQ(p.o, fixed.o);
    EXPECT_EQ(p.lse, fixed.lse);
    EXPECT_EQ(la_context_set_cluster(plain.ctx, LONGATTN_SOURCE_DIR "/configs/clusters/h200-node.ini", 1), LA_ERR_ARGUMENT);
    EXPECT_NE(std::string(la_last_error()).find("strategy: the context was not created with LA_AUTO"), std::string::npos);
    opt.strategy = static_cast<la_strategy>(5);
    la_context* bad = nullptr;
    EXPECT_EQ(la_context_create_local(&opt, &bad), LA_ERR_ARGUMENT);
    EXPECT_NE(std::string(la_last_error()).find("LA_ALLGATHER or LA_AUTO, got 5"), std::string::npos) << la_last_error();
    la_context_destroy(ctx);
}

// la_predict: the ranking --strategy auto uses, with the C++ rank_strategies' figures; on 8 H200 at 64K
// causal tokens the ring on zigzag shards comes first; bad arguments are named.
TEST(CApi, PredictGivesTheCostModelsRanking) {
    const char* h200 = LONGATTN_SOURCE_DIR "/configs/clusters/h200-node.ini";
    la_pattern pat;
    la_pattern_default(&pat);
    pat.causal = 1;
    const DLDataType bf16{kDLBfloat, 16, 1};
    size_t n = 0;
    ASSERT_EQ(la_predict(h200, 8, 65536, 1, 32, 8, 128, bf16, &pat, 1, nullptr, 0, &n), LA_OK) << la_last_error();
    ASSERT_EQ(n, 10u);  // ring, Ulysses, all-gather, hybrid u = 2 and 4; two layouts each
    std::vector<la_prediction> out(n);
    ASSERT_EQ(la_predict(h200, 8, 65536, 1, 32, 8, 128, bf16, &pat, 1, out.data(), n, &n), LA_OK) << la_last_error();
    ModelJob j;
    j.tokens = 65536, j.heads = 32, j.kv_heads = 8, j.head_dim = 128, j.dtype = DType::bf16, j.ranks = 8;
    PatternSpec spec;
    spec.causal = true;
    spec.seq_len = 65536;
    const auto ranked = rank_strategies(load_cluster(h200), j, Pattern(spec), true);
    ASSERT_EQ(ranked.size(), n);
    for (std::size_t i = 0; i < n; ++i) {
        EXPECT_EQ(out[i].strategy, static_cast<la_strategy>(ranked[i].dist.strategy)) << i;
        EXPECT_EQ(out[i].layout, static_cast<la_layout>(ranked[i].layout)) << i;
        EXPECT_EQ(out[i].fwd_s, ranked[i].p.fwd_s) << i;
        EXPECT_EQ(out[i].bwd_s, ranked[i].p.bwd_s) << i;
        EXPECT_EQ(out[i].device_bytes, ranked[i].p.device_memory(true)) << i;
        EXPECT_EQ(out[i].fits, 1) << i;
    }
    EXPECT_EQ(out[0].strategy, LA_RING);
    EXPECT_EQ(out[0].layout, LA_ZIGZAG);
    EXPECT_GT(out[0].efficiency, 0.99);
    auto refused = [&](la_status st, const char* what) {
        EXPECT_EQ(st, LA_ERR_ARGUMENT);
        EXPECT_NE(std::string(la_last_error()).find(what), std::string::npos) << la_last_error();
    };
    refused(la_predict(h200, 0, 65536, 1, 32, 8, 128, bf16, &pat, 1, nullptr, 0, &n), "ranks: must be 1 to 4096");
    refused(la_predict(h200, 8, 65536, 1, 3, 2, 128, bf16, &pat, 1, nullptr, 0, &n), "heads: must be a positive multiple");
    refused(la_predict(h200, 8, 65536, 1, 32, 8, 128, bf16, &pat, 1, nullptr, 4, &n), "out: is NULL with a capacity of 4");
    refused(la_predict("no/such.ini", 8, 65536, 1, 32, 8, 128, bf16, &pat, 1, nullptr, 0, &n), "cannot read 'no/such.ini'");
    refused(la_predict(h200, 8, 65536, 1, 32, 8, 128, DLDataType{kDLInt, 8, 1}, &pat, 1, nullptr, 0, &n), "dtype: must be float32");
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
