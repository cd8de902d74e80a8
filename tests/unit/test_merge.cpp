// merge_partial: hand-worked merges (including -inf rows and huge LSEs), and the property a
// distributed strategy relies on: running the forward kernel on shards of the keys and merging the
// partials gives the single-call result, whatever the split, the order, or the masked rows.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numeric>

#include "longattn/error.hpp"
#include "testing.hpp"

namespace longattn::test {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- Hand-worked values -----------------------------------------------------------------------

struct Partial {
    Tensor o;
    std::vector<float> lse;
};

// One head, S rows, D = 4; row r of O is filled with values[r] + 0.25 * d.
Partial make_partial(DType t, const std::vector<float>& values, const std::vector<float>& lse) {
    const auto S = static_cast<std::int64_t>(values.size());
    Partial p{Tensor(t, {1, S, 1, 4}), lse};
    for (std::int64_t r = 0; r < S; ++r)
        for (std::int64_t d = 0; d < 4; ++d)
            p.o.set(r * 4 + d, std::isinf(lse[static_cast<std::size_t>(r)]) ? 0.0f
                                                                             : values[static_cast<std::size_t>(r)] + 0.25f * static_cast<float>(d));
    return p;
}

TEST(MergeValues, HandWorkedRows) {
    for (DType t : {DType::f32, DType::bf16}) {
        for (int threads : {1, 2}) {
            // Rows: both finite (weights 1/4 and 3/4); acc -inf; new -inf; both -inf; huge LSEs.
            Partial acc = make_partial(DType::f32, {1, 5, 2, 7, -1}, {0, -kInf, 1.5f, -kInf, 1e4f});
            const Partial add = make_partial(t, {3, 4, 9, 8, 1}, {std::log(3.0f), 2.5f, -kInf, -kInf, 1e4f + 1});
            kernels::merge_partial(acc.o.view(), acc.lse.data(), add.o.view(), add.lse.data(), threads);
            SCOPED_TRACE(std::string(dtype_name(t)) + " threads=" + std::to_string(threads));

            EXPECT_NEAR(acc.lse[0], std::log(4.0f), 1e-6);
            EXPECT_EQ(acc.lse[1], 2.5f);
            EXPECT_EQ(acc.lse[2], 1.5f);
            EXPECT_EQ(acc.lse[3], -kInf);
            const double w = 1.0 / (1.0 + std::exp(1.0));  // weight of the first partial in row 4
            EXPECT_NEAR(acc.lse[4], 1e4 + 1 + std::log1p(std::exp(-1.0)), 1e-3);
            for (std::int64_t d = 0; d < 4; ++d) {
                const double off = 0.25 * static_cast<double>(d);
                EXPECT_NEAR(acc.o.get(0 * 4 + d), 0.25 * (1 + off) + 0.75 * (3 + off), 1e-6);
                EXPECT_NEAR(acc.o.get(1 * 4 + d), 4 + off, 1e-6);
                EXPECT_NEAR(acc.o.get(2 * 4 + d), 2 + off, 1e-6);
                EXPECT_EQ(acc.o.get(3 * 4 + d), 0.0f) << "two -inf partials must merge to O = 0, not NaN";
                // At LSE 1e4 one fp32 ulp is ~1e-3, so weights exp(l - lse) from a rounded lse carry
                // up to ~5e-4 relative error; the point of this row is that nothing overflows.
                EXPECT_NEAR(acc.o.get(4 * 4 + d), w * (-1 + off) + (1 - w) * (1 + off), 1e-3);
            }
        }
    }
}

TEST(MergeValues, NanOnEitherSideGivesNan) {
    constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
    // Rows: NaN acc LSE; NaN new LSE; NaN new with acc -inf; NaN acc with new -inf; finite (control).
    Partial acc = make_partial(DType::f32, {1, 2, 0, 4, 5}, {kNaN, 0.5f, -kInf, kNaN, 1.0f});
    const Partial add = make_partial(DType::f32, {6, 7, 8, 0, 9}, {0.25f, kNaN, kNaN, -kInf, 1.0f});
    kernels::merge_partial(acc.o.view(), acc.lse.data(), add.o.view(), add.lse.data(), 1);
    for (std::int64_t r = 0; r < 4; ++r) {
        EXPECT_TRUE(std::isnan(acc.lse[static_cast<std::size_t>(r)])) << "row " << r;
        for (std::int64_t d = 0; d < 4; ++d) EXPECT_TRUE(std::isnan(acc.o.get(r * 4 + d))) << "row " << r;
    }
    EXPECT_NEAR(acc.lse[4], 1.0 + std::log(2.0), 1e-6);
    for (std::int64_t d = 0; d < 4; ++d) EXPECT_NEAR(acc.o.get(4 * 4 + d), 7 + 0.25 * static_cast<double>(d), 1e-6);
}

TEST(MergeValues, WeightsComeFromTheDifferenceOfLargeLses) {
    // Two equal partials at LSE 300 (one fp32 ulp there is 3e-5): the weights must be exactly 1/2,
    // so the merged O is the partial's O to the bit, whatever the rounding of the merged LSE.
    Partial acc = make_partial(DType::f32, {0.7f}, {300.0f});
    const Partial add = make_partial(DType::f32, {0.7f}, {300.0f});
    kernels::merge_partial(acc.o.view(), acc.lse.data(), add.o.view(), add.lse.data(), 1);
    for (std::int64_t d = 0; d < 4; ++d) EXPECT_EQ(acc.o.get(d), add.o.get(d));
    EXPECT_EQ(acc.lse[0], static_cast<float>(300.0 + std::log(2.0)));
}

// ---- Sharded forward == single forward --------------------------------------------------------

// A problem whose keys are rows `rows` of full's keys (values and positions), same queries.
Problem key_shard(const Problem& full, const std::vector<std::int64_t>& rows) {
    Case c = full.c;
    c.Sk = static_cast<std::int64_t>(rows.size());
    c.k_pos.clear();
    for (auto r : rows) c.k_pos.push_back(full.k_pos[static_cast<std::size_t>(r)]);
    Problem shard(c);
    const auto& s = full.k.shape();
    for (std::int64_t b = 0; b < s[0]; ++b)
        for (std::int64_t j = 0; j < c.Sk; ++j)
            for (std::int64_t h = 0; h < s[2]; ++h)
                for (std::int64_t d = 0; d < s[3]; ++d) {
                    const std::int64_t src = ((b * s[1] + rows[static_cast<std::size_t>(j)]) * s[2] + h) * s[3] + d;
                    const std::int64_t dst = ((b * c.Sk + j) * s[2] + h) * s[3] + d;
                    shard.k.set(dst, full.k.get(src));
                    shard.v.set(dst, full.v.get(src));
                }
    return shard;
}

// Runs the forward kernel on each shard and merges the partials in `order`. The first partial is
// converted to the fp32 accumulator the contract asks for; the others stay in their own dtype.
FwdOut sharded_forward(const Problem& full, const std::vector<std::vector<std::int64_t>>& shards,
                       const std::vector<std::size_t>& order, DType partial_dtype, int threads = 0) {
    std::vector<FwdOut> parts;
    for (const auto& rows : shards) {
        Problem shard = key_shard(full, rows);
        shard.c.o_dtype = partial_dtype;
        parts.push_back(run_forward(shard));
    }
    const auto& first = parts[order[0]];
    FwdOut acc{Tensor(DType::f32, first.o.shape()), first.lse};
    for (std::int64_t n = 0; n < acc.o.numel(); ++n) acc.o.set(n, first.o.get(n));
    for (std::size_t i = 1; i < order.size(); ++i) {
        const auto& p = parts[order[i]];
        kernels::merge_partial(acc.o.view(), acc.lse.data(), p.o.view(), p.lse.data(), threads);
    }
    return acc;
}

// The same through FwdParams::accumulate: every shard after the first continues the online softmax
// from the (O, LSE) already in the fp32 output, with no separate partial or merge pass.
FwdOut accumulated_forward(const Problem& full, const std::vector<std::vector<std::int64_t>>& shards,
                           const std::vector<std::size_t>& order) {
    FwdOut acc{Tensor(DType::f32, {full.c.B, full.c.Sq, full.c.Hq, full.c.D}),
               std::vector<float>(static_cast<std::size_t>(full.c.B * full.c.Hq * full.c.Sq))};
    for (std::size_t i = 0; i < order.size(); ++i) {
        const Problem shard = key_shard(full, shards[order[i]]);
        kernels::FwdParams p = shard.fwd_params(acc.o, acc.lse.data());
        p.accumulate = i > 0;
        kernels::flash_forward_cpu(p);
    }
    return acc;
}

std::vector<std::int64_t> range(std::int64_t lo, std::int64_t hi) { return positions(hi - lo, lo); }

std::vector<std::int64_t> every(std::int64_t n, std::int64_t r, std::int64_t p) {
    std::vector<std::int64_t> out;
    for (std::int64_t j = r; j < n; j += p) out.push_back(j);
    return out;
}

// Merged vs the single call (both fp32 math; different summation order) and vs fp64 under the rule.
void expect_merged_matches(const Problem& full, const FwdOut& merged, DType partial_dtype) {
    Case single_case = full.c;
    single_case.o_dtype = DType::f32;
    const Problem single_pb(single_case);
    const FwdOut single = run_forward(single_pb);
    const auto o_m = merged.o.to_f64(), o_s = single.o.to_f64();
    const auto l_m = to_f64(merged.lse), l_s = to_f64(single.lse);
    if (partial_dtype == DType::f32) {
        const ErrorAt eo = max_abs_err(o_m, o_s), el = max_abs_err(l_m, l_s);
        EXPECT_LE(eo.err, 1e-5 * std::max(1.0, max_abs_finite(o_s))) << "merged O vs single call, worst at " << eo.index;
        EXPECT_LE(el.err, 1e-5 * std::max(1.0, max_abs_finite(l_s))) << "merged LSE vs single call, worst at "
                                                                     << el.index << ": " << l_m[el.index] << " vs "
                                                                     << l_s[el.index];
    }
    // Against fp64: the plain baseline rounds O to the partials' dtype as the shards do.
    const auto fp = single_pb.fwd_params(single.o, nullptr);
    const auto ref = kernels::reference_forward(fp, RefPrecision::f64);
    const auto plain = kernels::reference_forward(fp, precision_of(partial_dtype));
    const auto plain32 = kernels::reference_forward(fp, RefPrecision::f32);
    EXPECT_TRUE(flash_rule("merged O", o_m, plain.o, ref.o, partial_dtype, kForwardFactor));
    EXPECT_TRUE(flash_rule("merged LSE", l_m, plain32.lse, ref.lse, DType::f32, kForwardFactor));
}

Case merge_case() {
    Case c;
    c.name = "merge";
    c.Sq = c.Sk = 197;
    c.Hq = 4;
    c.Hkv = 2;
    c.spec.causal = true;
    c.spec.alibi_slopes = alibi_slopes(4);
    return c;
}

TEST(MergeShards, TwoContiguousShards) {
    // Causal: queries before position 100 have no key in the second shard (-inf rows there).
    const Problem full(merge_case());
    const auto merged = sharded_forward(full, {range(0, 100), range(100, 197)}, {0, 1}, DType::f32);
    expect_merged_matches(full, merged, DType::f32);
}

TEST(MergeShards, ThreeInterleavedShards) {
    const Problem full(merge_case());
    const auto merged =
        sharded_forward(full, {every(197, 0, 3), every(197, 1, 3), every(197, 2, 3)}, {0, 1, 2}, DType::f32);
    expect_merged_matches(full, merged, DType::f32);
}

TEST(MergeShards, WindowAndDocumentsLeaveMaskedRows) {
    Case c = merge_case();
    c.spec.window = Window{20, 0};
    c.spec.doc_bounds = {0, 60, 197};
    const Problem full(c);
    const auto merged = sharded_forward(full, {range(0, 70), range(70, 140), range(140, 197)}, {0, 1, 2}, DType::f32);
    expect_merged_matches(full, merged, DType::f32);
}

TEST(MergeShards, ShardEntirelyMasked) {
    // Queries 0..99 and keys 0..149: the keys 100..149 lie in every query's future.
    Case c = merge_case();
    c.Sq = 100;
    c.Sk = 150;
    const Problem full(c);
    for (const std::vector<std::size_t>& order : {std::vector<std::size_t>{0, 1}, std::vector<std::size_t>{1, 0}}) {
        const auto merged = sharded_forward(full, {range(0, 100), range(100, 150)}, order, DType::f32);
        expect_merged_matches(full, merged, DType::f32);
    }
}

TEST(MergeShards, Bf16Partials) {
    Case c = merge_case();
    c.dtype = DType::bf16;
    const Problem full(c);
    const auto merged = sharded_forward(full, {range(0, 90), range(90, 197)}, {0, 1}, DType::bf16);
    expect_merged_matches(full, merged, DType::bf16);
}

TEST(AccumulateShards, MatchesTheSingleCallInEveryCase) {
    const Problem full(merge_case());
    expect_merged_matches(full, accumulated_forward(full, {range(0, 100), range(100, 197)}, {0, 1}), DType::f32);
    expect_merged_matches(full, accumulated_forward(full, {every(197, 0, 3), every(197, 1, 3), every(197, 2, 3)}, {2, 0, 1}),
                          DType::f32);
    Case c = merge_case();
    c.spec.window = Window{20, 0};
    c.spec.doc_bounds = {0, 60, 197};
    const Problem windowed(c);
    expect_merged_matches(windowed, accumulated_forward(windowed, {range(0, 70), range(70, 140), range(140, 197)}, {0, 1, 2}),
                          DType::f32);
    // A shard entirely in the future of every query, first or last: LSE -inf rows must stay exact.
    c = merge_case();
    c.Sq = 100;
    c.Sk = 150;
    const Problem future(c);
    for (const std::vector<std::size_t>& order : {std::vector<std::size_t>{0, 1}, std::vector<std::size_t>{1, 0}})
        expect_merged_matches(future, accumulated_forward(future, {range(0, 100), range(100, 150)}, order), DType::f32);
}

TEST(AccumulateShards, NeedsAnFp32Output) {
    Case c = merge_case();
    c.o_dtype = DType::bf16;
    const Problem pb(c);
    FwdOut out{Tensor(DType::bf16, {c.B, c.Sq, c.Hq, c.D}), std::vector<float>(static_cast<std::size_t>(c.B * c.Hq * c.Sq))};
    kernels::FwdParams p = pb.fwd_params(out.o, out.lse.data());
    p.accumulate = true;
    EXPECT_THROW(kernels::flash_forward_cpu(p), longattn::Error);
}

TEST(MergeShards, OrderIndependence) {
    const Problem full(merge_case());
    const std::vector<std::vector<std::int64_t>> shards = {range(0, 70), range(70, 140), range(140, 197)};
    const auto a = sharded_forward(full, shards, {0, 1, 2}, DType::f32);
    for (const std::vector<std::size_t>& order : {std::vector<std::size_t>{2, 0, 1}, std::vector<std::size_t>{1, 2, 0}}) {
        const auto b = sharded_forward(full, shards, order, DType::f32, 1);
        const ErrorAt eo = max_abs_err(b.o.to_f64(), a.o.to_f64());
        const ErrorAt el = max_abs_err(to_f64(b.lse), to_f64(a.lse));
        // Merging is commutative and associative up to fp32 rounding of a few operations per row.
        EXPECT_LE(eo.err, 1e-6 * std::max(1.0, max_abs_finite(a.o.to_f64())))
            << "O depends on merge order " << order[0] << order[1] << order[2];
        EXPECT_LE(el.err, 1e-6 * std::max(1.0, max_abs_finite(to_f64(a.lse))))
            << "LSE depends on merge order " << order[0] << order[1] << order[2];
    }
}

}  // namespace
}  // namespace longattn::test
