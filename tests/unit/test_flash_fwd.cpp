// The CPU flash forward kernel against the fp64 reference under FlashAttention's rule (testing.hpp):
// every pattern kind alone and combined, each storage type, odd shapes and head dims, GQA/MQA, cross
// attention, the non-contiguous position sets distributed strategies pass, fully masked rows, huge
// softmax scales, strided views, and bitwise determinism across thread counts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "testing.hpp"

namespace longattn::test {
namespace {

constexpr std::int64_t kN = 197;  // odd, so no tile of any kernel divides it

// ---- The reference itself, on values worked by hand ---------------------------------------------

// One query, two keys, D = 1, scale 1: q = 1, k = {0, 1}, v = {2, 4}; positions as given.
RefForward tiny(PatternSpec spec, std::vector<std::int64_t> q_pos, std::vector<std::int64_t> k_pos,
                std::int64_t head_offset = 0) {
    Case c;
    c.head_offset = head_offset;
    c.Sq = 1;
    c.Sk = 2;
    c.Hq = c.Hkv = 1;
    c.D = 1;
    spec.scale = 1.0f;
    c.spec = spec;
    c.q_pos = std::move(q_pos);
    c.k_pos = std::move(k_pos);
    Problem pb(c);
    pb.q.set(0, 1.0f);
    pb.k.set(0, 0.0f);
    pb.k.set(1, 1.0f);
    pb.v.set(0, 2.0f);
    pb.v.set(1, 4.0f);
    const Tensor o(DType::f32, {1, 1, 1, 1});
    return kernels::reference_forward(pb.fwd_params(o, nullptr));
}

TEST(ReferenceForward, HandWorkedValues) {
    const double e = std::exp(1.0);
    auto r = tiny({}, {0}, {0, 1});
    EXPECT_NEAR(r.o[0], (2 + 4 * e) / (1 + e), 1e-14);
    EXPECT_NEAR(r.lse[0], std::log(1 + e), 1e-14);

    PatternSpec alibi;  // s = {0 - 0.5 * |3 - 1|, 1 - 0} = {-1, 1}
    alibi.alibi_slopes = {0.5f};
    r = tiny(alibi, {3}, {1, 3});
    EXPECT_NEAR(r.o[0], (2 / e + 4 * e) / (1 / e + e), 1e-14);
    EXPECT_NEAR(r.lse[0], std::log(1 / e + e), 1e-14);
    alibi.alibi_slopes = {0.1f, 0.5f};  // head_offset 1: the only local head is global head 1
    r = tiny(alibi, {3}, {1, 3}, 1);
    EXPECT_NEAR(r.o[0], (2 / e + 4 * e) / (1 / e + e), 1e-14);

    PatternSpec cap;  // s = {0, 0.5 tanh(1 / 0.5)}
    cap.softcap = 0.5f;
    r = tiny(cap, {0}, {0, 1});
    const double s1 = 0.5 * std::tanh(2.0);
    EXPECT_NEAR(r.o[0], (2 + 4 * std::exp(s1)) / (1 + std::exp(s1)), 1e-14);

    PatternSpec causal;  // both keys in the future
    causal.causal = true;
    r = tiny(causal, {0}, {1, 2});
    EXPECT_EQ(r.o[0], 0.0);
    EXPECT_EQ(r.lse[0], -std::numeric_limits<double>::infinity());
    r = tiny(causal, {1}, {1, 2});  // only the first key: O = v0 exactly, LSE = s0 = 0
    EXPECT_EQ(r.o[0], 2.0);
    EXPECT_EQ(r.lse[0], 0.0);
}

TEST(ReferenceForward, GroupedHeadsReadKvHeadOverGroupSize) {
    // Hq = 4, Hkv = 2: query heads 0, 1 read kv head 0 (V = 1), heads 2, 3 read kv head 1 (V = -1).
    Case c;
    c.name = "GQA head mapping";
    c.Sq = c.Sk = 16;
    c.Hq = 4;
    c.Hkv = 2;
    c.D = 8;
    Problem pb(c);
    for (std::int64_t n = 0; n < pb.v.numel(); ++n) pb.v.set(n, (n / c.D) % 2 == 0 ? 1.0f : -1.0f);
    const Tensor o(DType::f32, {1, 16, 4, 8});
    const auto r = kernels::reference_forward(pb.fwd_params(o, nullptr));
    for (std::size_t n = 0; n < r.o.size(); ++n)
        ASSERT_NEAR(r.o[n], (n / 8) % 4 < 2 ? 1.0 : -1.0, 1e-12) << "element " << n;
    check_forward(pb, run_forward(pb));
}

TEST(ReferenceForward, PlainPrecisionsRoundAsDocumented) {
    // fp32 plain is within fp32 noise of fp64; bf16 plain differs visibly (its intermediates are
    // rounded) yet stays within bf16 accuracy. Otherwise the rule would be vacuous or unreachable.
    Case c;
    c.Sq = c.Sk = 128;
    c.spec.causal = true;
    const Problem pb(c);
    const Tensor o(DType::f32, {1, 128, 2, 64});
    const auto fp = pb.fwd_params(o, nullptr);
    const auto ref = kernels::reference_forward(fp, RefPrecision::f64);
    const double e32 = max_abs_err(kernels::reference_forward(fp, RefPrecision::f32).o, ref.o).err;
    const double e16 = max_abs_err(kernels::reference_forward(fp, RefPrecision::bf16).o, ref.o).err;
    const double eh = max_abs_err(kernels::reference_forward(fp, RefPrecision::f16).o, ref.o).err;
    EXPECT_LT(e32, 1e-5);
    EXPECT_GT(e32, 0.0);
    EXPECT_GT(e16, 1e-3);
    EXPECT_LT(e16, 5e-2);
    EXPECT_GT(eh, 1e-4);
    EXPECT_LT(eh, e16);
}

// ---- Shapes -----------------------------------------------------------------------------------

Case causal_case(const char* name, std::int64_t sq, std::int64_t sk, DType t) {
    Case c;
    c.name = name;
    c.Sq = sq;
    c.Sk = sk;
    c.dtype = t;
    c.spec.causal = true;
    return c;
}

TEST(ForwardShape, Odd113x203BottomRightCausal) {
    for (DType t : {DType::f32, DType::bf16}) {
        Case c = causal_case("113x203 causal, queries are the last 113 keys", 113, 203, t);
        c.q_pos = positions(113, 90);
        check_forward(c);
    }
}

TEST(ForwardShape, Odd113x203DenseAndWindow) {
    Case c = causal_case("113x203 dense", 113, 203, DType::f32);
    c.spec.causal = false;
    check_forward(c);
    c.name = "113x203 window(20,30)";
    c.spec.window = Window{20, 30};
    check_forward(c);
}

TEST(ForwardShape, Long1023x1024) {
    Case c = causal_case("1023x1024 causal fp32", 1023, 1024, DType::f32);
    c.q_pos = positions(1023, 1);
    check_forward(c);
    c = causal_case("1023x1024 causal documents bf16", 1023, 1024, DType::bf16);
    c.Hq = c.Hkv = 1;
    c.q_pos = positions(1023, 1);
    c.spec.doc_bounds = {0, 300, 301, 777, 1024};
    check_forward(c);
}

TEST(ForwardShape, HeadDims) {
    for (std::int64_t d : {32, 59, 64, 128, 256}) {
        Case c = causal_case("head dim", 150, 150, DType::f32);
        c.name.append(" ").append(std::to_string(d));
        c.D = d;
        c.Hq = c.Hkv = d == 256 ? 1 : 2;
        check_forward(c);
    }
    Case c = causal_case("head dim 59 bf16", 150, 150, DType::bf16);
    c.D = 59;
    check_forward(c);
}

TEST(ForwardShape, GroupedQueryAttention8to1) {
    Case c = causal_case("GQA 16:2", 130, 130, DType::f32);
    c.Hq = 16;
    c.Hkv = 2;
    c.D = 32;
    check_forward(c);
    c.dtype = DType::bf16;
    c.spec.alibi_slopes = alibi_slopes(16);
    c.name = "GQA 16:2 alibi bf16";
    check_forward(c);
}

TEST(ForwardShape, MultiQueryAttention) {
    Case c = causal_case("MQA 4:1 alibi", 150, 150, DType::f32);
    c.Hq = 4;
    c.Hkv = 1;
    c.spec.alibi_slopes = alibi_slopes(4);  // per query head: heads sharing a kv head still differ
    check_forward(c);
    c.dtype = DType::f16;
    c.name = "MQA 4:1 alibi fp16";
    check_forward(c);
}

TEST(ForwardShape, HeadOffsetSelectsAlibiSlopes) {
    // A rank holding global query heads 4 and 5 of 6 (heads split across ranks) uses slopes 4 and 5.
    Case c = causal_case("head_offset 4 of 6 heads", 150, 150, DType::f32);
    c.Hq = 2;
    c.Hkv = 1;
    c.head_offset = 4;
    c.spec.alibi_slopes = alibi_slopes(6);
    check_forward(c);
}

TEST(ForwardShape, CrossAttention) {
    Case c;
    c.name = "cross 77 queries x 300 keys";
    c.Sq = 77;
    c.Sk = 300;
    check_forward(c);
    c.name = "cross, keys at other positions, alibi";
    c.k_pos = positions(300, 1000);
    c.spec.alibi_slopes = alibi_slopes(c.Hq);
    check_forward(c);
}

TEST(ForwardShape, DecodeOneQuery) {
    Case c = causal_case("one query at position 500", 1, 501, DType::f32);
    c.q_pos = {500};
    check_forward(c);
    c.dtype = DType::bf16;
    c.spec.window = Window{100, 0};
    c.name = "one query, window 100, bf16";
    check_forward(c);
}

TEST(ForwardShape, BatchAndStridedViews) {
    // pad > 0: head rows are followed by NaN padding; B = 3 checks the batch stride.
    Case c = causal_case("B=3, padded views, documents", 100, 100, DType::f32);
    c.B = 3;
    c.pad = 5;
    c.spec.doc_bounds = {0, 40, 100};
    check_forward(c);
    c.dtype = DType::bf16;
    c.name = "B=3, padded views, bf16";
    check_forward(c);
}

TEST(ForwardShape, MixedStorageTypes) {
    // "any storage dtype (each may differ)": q fp32, k bf16, v fp16, o bf16.
    Case c = causal_case("mixed dtypes", 120, 120, DType::f32);
    c.k_dtype = DType::bf16;
    c.v_dtype = DType::f16;
    c.o_dtype = DType::bf16;
    check_forward(c);
    c.o_dtype = DType::f32;
    c.name = "mixed dtypes, fp32 output";
    check_forward(c);
}

// ---- Positions as distributed strategies pass them --------------------------------------------

TEST(ForwardPositions, ZigzagChunks) {
    // A zigzag rank holds chunks i and 2R-1-i; here queries hold chunks 0 and 7 of 8 x 64 tokens and
    // keys chunks 2 and 5 of another rank. Early query rows have no key in the past: fully masked.
    Case c = causal_case("zigzag chunks", 128, 128, DType::f32);
    c.q_pos = concat(positions(64, 0), positions(64, 448));
    c.k_pos = concat(positions(64, 128), positions(64, 320));
    check_forward(c);
    c.name = "zigzag chunks, window 200, bf16";
    c.dtype = DType::bf16;
    c.spec.window = Window{200, 0};
    check_forward(c);
}

TEST(ForwardPositions, StridedPositions) {
    // A striped layout gives rank r the tokens r, r + P, r + 2P, ...
    Case c = causal_case("striped r=1,P=4 vs r=3,P=4", 128, 128, DType::f32);
    c.q_pos = positions(128, 1, 4);
    c.k_pos = positions(128, 3, 4);
    check_forward(c);
    c.name = "striped, documents, window";
    c.spec.doc_bounds = {0, 100, 300, 512};
    c.spec.window = Window{40, 0};
    check_forward(c);
}

TEST(ForwardPositions, UnsortedPositions) {
    // The contract names each row by its global position and does not require them sorted.
    Case c = causal_case("reversed queries, interleaved keys", 96, 96, DType::f32);
    c.q_pos = positions(96, 95, -1);
    for (std::int64_t j = 0; j < 96; ++j) c.k_pos.push_back(j % 2 == 0 ? j / 2 : 95 - j / 2);
    c.spec.window = Window{30, 0};
    check_forward(c);
}

// ---- Fully masked rows and extreme scores -----------------------------------------------------

void expect_all_masked(const FwdOut& out) {
    for (float l : out.lse) ASSERT_EQ(l, -std::numeric_limits<float>::infinity());
    for (std::int64_t n = 0; n < out.o.numel(); ++n) ASSERT_EQ(out.o.get(n), 0.0f) << "element " << n;
}

TEST(ForwardMasked, EveryKeyInTheFuture) {
    for (DType t : {DType::f32, DType::bf16}) {
        Case c = causal_case("all keys in the future", 64, 64, t);
        c.k_pos = positions(64, 100);
        const Problem pb(c);
        const FwdOut out = run_forward(pb);
        expect_all_masked(out);
        check_forward(pb, out);
    }
}

TEST(ForwardMasked, SomeRowsMasked) {
    // Rows at positions 0..49 have every key (50..149) in their future.
    Case c = causal_case("first 50 rows fully masked", 100, 100, DType::f32);
    c.k_pos = positions(100, 50);
    const Problem pb(c);
    const FwdOut out = run_forward(pb);
    for (std::int64_t h = 0; h < c.Hq; ++h) {
        EXPECT_EQ(out.lse[lse_index(0, h, 49, c.Hq, c.Sq)], -std::numeric_limits<float>::infinity());
        EXPECT_TRUE(std::isfinite(out.lse[lse_index(0, h, 50, c.Hq, c.Sq)]));
    }
    check_forward(pb, out);
}

TEST(ForwardMasked, NoKeys) {
    Case c = causal_case("Sk = 0", 16, 0, DType::f32);
    const Problem pb(c);
    expect_all_masked(run_forward(pb));
}

TEST(ForwardMasked, DocumentsApartFromKeys) {
    // Queries in document 1, keys in documents 0 and 2: nothing allowed.
    Case c;
    c.name = "other documents";
    c.Sq = c.Sk = 40;
    c.q_pos = positions(40, 50);
    c.k_pos = concat(positions(20, 10), positions(20, 120));
    c.spec.doc_bounds = {0, 50, 100, 200};
    const Problem pb(c);
    expect_all_masked(run_forward(pb));
}

TEST(ForwardScale, HugeSoftmaxScale) {
    // scale 1e3 gives scores in the thousands; without max subtraction exp overflows to inf/NaN.
    for (DType t : {DType::f32, DType::bf16}) {
        Case c = causal_case("scale 1e3", 150, 150, t);
        c.spec.scale = 1e3f;
        const Problem pb(c);
        const FwdOut out = run_forward(pb);
        for (float l : out.lse) ASSERT_TRUE(std::isfinite(l)) << "LSE must be finite at scale 1e3";
        for (std::int64_t n = 0; n < out.o.numel(); ++n) ASSERT_TRUE(std::isfinite(out.o.get(n)));
        check_forward(pb, out);
    }
}

TEST(ForwardScale, LargeInputs) {
    Case c = causal_case("q, k amplitude 30, softcap 30", 150, 150, DType::f32);
    c.amplitude = 30.0;
    check_forward(c);
    c.spec.softcap = 30.0f;
    check_forward(c);
}

// ---- Determinism ------------------------------------------------------------------------------

TEST(ForwardDeterminism, SameBitsForAnyThreadCount) {
    for (DType t : {DType::f32, DType::bf16}) {
        Case c = causal_case("determinism", 300, 300, t);
        c.B = 2;
        c.Hq = 4;
        c.Hkv = 2;
        c.spec.doc_bounds = {0, 130, 300};
        c.spec.alibi_slopes = alibi_slopes(4);
        const Problem pb(c);
        const FwdOut base = run_forward(pb, 1);
        for (int threads : {1, 2, 4}) {
            const FwdOut again = run_forward(pb, threads);
            EXPECT_EQ(again.o.bytes(), base.o.bytes()) << dtype_name(t) << " O differs with threads=" << threads;
            EXPECT_EQ(0, std::memcmp(again.lse.data(), base.lse.data(), base.lse.size() * sizeof(float)))
                << dtype_name(t) << " LSE differs with threads=" << threads;
        }
    }
}

}  // namespace
}  // namespace longattn::test
