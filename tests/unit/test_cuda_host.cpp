// The host parts of the CUDA kernels, on every machine (no toolkit or GPU needed): the tile plan
// (kernels/cuda/tile_plan.hpp) against the Pattern pair by pair, and the fragment layouts
// (kernels/cuda/fragment_layout.hpp) through a warp emulator written from the PTX ISA's tables.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cuda/fragment_layout.hpp"
#include "kernels/cuda/tile_plan.hpp"
#include "testing.hpp"

namespace longattn::test {
namespace {

constexpr std::int64_t kN = 197;  // odd: no tile of the kernels divides it

// ---- The tile plan, pair by pair ------------------------------------------------------------------

using kernels::cuda::kKeyTile;
using kernels::cuda::plan_tiles;
using kernels::cuda::Segment;
using kernels::cuda::TilePlan;

// (query tile, key tile, mask block or -1) of every planned tile, from one side of the plan.
std::set<std::tuple<std::int64_t, std::int64_t, std::int32_t>> planned(const TilePlan& plan, bool by_key) {
    const auto& idx = by_key ? plan.by_key : plan.by_query;
    const std::int64_t tiles = by_key ? plan.k_tiles : plan.q_tiles;
    std::set<std::tuple<std::int64_t, std::int64_t, std::int32_t>> out;
    for (std::int64_t t = 0; t < tiles; ++t) {
        std::int64_t last = -1;
        for (std::int32_t s = idx.seg_ptr[static_cast<std::size_t>(t)]; s < idx.seg_ptr[static_cast<std::size_t>(t) + 1]; ++s) {
            const Segment& seg = idx.segs[static_cast<std::size_t>(s)];
            EXPECT_GT(seg.count, 0);
            EXPECT_GT(seg.first, last) << "segments must be in tile order";
            EXPECT_TRUE(seg.mask < 0 || seg.count == 1) << "a PARTIAL segment holds one tile";
            for (std::int32_t i = 0; i < seg.count; ++i)
                out.insert(by_key ? std::make_tuple(std::int64_t{seg.first + i}, t, seg.mask)
                                  : std::make_tuple(t, std::int64_t{seg.first + i}, seg.mask));
            last = seg.first + seg.count - 1;
        }
    }
    return out;
}

void expect_exact_plan(const Pattern& pat, const std::vector<std::int64_t>& qp, const std::vector<std::int64_t>& kp,
                       std::int64_t rows, const std::string& what) {
    SCOPED_TRACE(what + " rows=" + std::to_string(rows) + " [" + pat.describe() + "]");
    const auto sq = static_cast<std::int64_t>(qp.size()), sk = static_cast<std::int64_t>(kp.size());
    const TilePlan plan = plan_tiles(pat, qp.data(), sq, kp.data(), sk, rows, true);
    ASSERT_EQ(plan.q_tiles, (sq + rows - 1) / rows);
    ASSERT_EQ(plan.k_tiles, (sk + kKeyTile - 1) / kKeyTile);
    ASSERT_EQ(plan.masks.size(), static_cast<std::size_t>(plan.partial_tiles * rows));
    const auto tiles = planned(plan, false);
    EXPECT_EQ(planned(plan, true), tiles) << "the by-key plan must list the same tiles with the same masks";

    // What the kernels compute from the plan, against the pattern, for every pair.
    std::vector<std::uint8_t> seen(static_cast<std::size_t>(sq * sk), 0);
    for (const auto& [qt, kt, mask] : tiles) {
        EXPECT_LT(mask, plan.partial_tiles);
        for (std::int64_t r = 0; r < rows; ++r) {
            const std::int64_t i = qt * rows + r;
            for (std::int64_t j0 = kt * kKeyTile, c = 0; c < kKeyTile; ++c) {
                const bool bit = mask < 0 || ((plan.masks[static_cast<std::size_t>(mask * rows + r)] >> c) & 1u);
                if (i >= sq || j0 + c >= sk) {
                    EXPECT_TRUE(mask < 0 || !bit) << "mask bits past the end must be 0";
                    continue;
                }
                seen[static_cast<std::size_t>(i * sk + j0 + c)] = bit ? 1 : 2;
            }
        }
    }
    std::int64_t wrong = 0;
    for (std::int64_t i = 0; i < sq; ++i)
        for (std::int64_t j = 0; j < sk; ++j)
            wrong += (seen[static_cast<std::size_t>(i * sk + j)] == 1) != pat.allowed(qp[static_cast<std::size_t>(i)], kp[static_cast<std::size_t>(j)]);
    EXPECT_EQ(wrong, 0) << "pairs the plan gets wrong";
    // No planned PARTIAL tile is really EMPTY or FULL.
    for (const auto& [qt, kt, mask] : tiles) {
        if (mask < 0) continue;
        const std::int64_t nk = std::min(kKeyTile, sk - kt * kKeyTile);
        bool any = false, every = true;
        for (std::int64_t r = 0; r < rows && qt * rows + r < sq; ++r) {
            const std::uint64_t w = plan.masks[static_cast<std::size_t>(mask * rows + r)];
            any = any || w != 0;
            every = every && w == (nk == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << nk) - 1);
        }
        EXPECT_TRUE(any && !every) << "tile (" << qt << ", " << kt << ") is planned PARTIAL";
    }
    // Heaviest tiles first, each once.
    for (const auto* idx : {&plan.by_query, &plan.by_key}) {
        std::vector<std::int32_t> sorted = idx->order;
        std::sort(sorted.begin(), sorted.end());
        for (std::size_t t = 0; t < sorted.size(); ++t) ASSERT_EQ(sorted[t], static_cast<std::int32_t>(t));
    }
}

TEST(TilePlan, WorkedExampleFromTheHeader) {
    PatternSpec s;
    s.causal = true;
    const Pattern pat(s);
    const auto pos = positions(200);
    const TilePlan plan = plan_tiles(pat, pos.data(), 200, pos.data(), 200, 64, true);
    const auto segs = [](const kernels::cuda::TileIndex& idx, std::size_t t) {
        std::vector<std::array<std::int32_t, 3>> out;
        for (std::int32_t s = idx.seg_ptr[t]; s < idx.seg_ptr[t + 1]; ++s) {
            const Segment& g = idx.segs[static_cast<std::size_t>(s)];
            out.push_back({g.first, g.count, g.mask < 0 ? -1 : 1});
        }
        return out;
    };
    using V = std::vector<std::array<std::int32_t, 3>>;
    EXPECT_EQ(segs(plan.by_query, 0), (V{{0, 1, 1}}));
    EXPECT_EQ(segs(plan.by_query, 1), (V{{0, 1, -1}, {1, 1, 1}}));
    EXPECT_EQ(segs(plan.by_query, 3), (V{{0, 3, -1}, {3, 1, 1}}));
    EXPECT_EQ(segs(plan.by_key, 0), (V{{0, 1, 1}, {1, 3, -1}}));
    EXPECT_EQ(plan.partial_tiles, 4);
    EXPECT_EQ(plan.by_query.order.front(), 3) << "the query tile with most key tiles starts first";
}

TEST(TilePlan, EveryPatternEveryPair) {
    for (const auto& [name, spec] : pattern_zoo(kN, 2)) {
        const Pattern pat(spec);
        for (std::int64_t rows : {64, 128}) {
            expect_exact_plan(pat, positions(kN), positions(kN), rows, name);
        }
    }
    for (const auto& [name, spec] : pattern_zoo(203, 2)) {
        const Pattern pat(spec);
        for (std::int64_t rows : {64, 128})
            expect_exact_plan(pat, positions(113, 90), positions(203), rows, name + " 113x203 offset");
    }
}

TEST(TilePlan, PositionsAsStrategiesPassThem) {
    for (const auto& [name, spec] : pattern_zoo(512, 2)) {
        const Pattern pat(spec);
        expect_exact_plan(pat, concat(positions(64, 0), positions(64, 448)), concat(positions(64, 128), positions(64, 320)),
                          64, name + " zigzag");
        expect_exact_plan(pat, positions(128, 1, 4), positions(128, 3, 4), 64, name + " striped");
        std::vector<std::int64_t> shuffled;
        for (std::int64_t j = 0; j < 150; ++j) shuffled.push_back(j % 2 == 0 ? j / 2 : 149 - j / 2);
        expect_exact_plan(pat, positions(96, 95, -1), shuffled, 128, name + " unsorted");
    }
}

TEST(TilePlan, EmptySides) {
    const Pattern pat;
    const auto pos = positions(100);
    const TilePlan no_keys = plan_tiles(pat, pos.data(), 100, nullptr, 0, 64, true);
    EXPECT_EQ(no_keys.q_tiles, 2);
    EXPECT_EQ(no_keys.k_tiles, 0);
    EXPECT_TRUE(no_keys.by_query.segs.empty());
    const TilePlan no_queries = plan_tiles(pat, nullptr, 0, pos.data(), 100, 64, true);
    EXPECT_EQ(no_queries.k_tiles, 2);
    ASSERT_EQ(no_queries.by_key.seg_ptr.size(), 3u);
    EXPECT_TRUE(no_queries.by_key.segs.empty());
}

// ---- Fragment layouts through a warp emulator -------------------------------------------------

// A 32-bit register holding two 16-bit values, low half first; values are small integers, exact in
// bf16, fp16 and fp32, so the emulated products are exact.
struct Reg {
    float lo = 0, hi = 0;
};
using Mat = std::vector<std::vector<float>>;

Mat numbered(int rows, int cols, int seed) {
    Mat m(static_cast<std::size_t>(rows), std::vector<float>(static_cast<std::size_t>(cols)));
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c)
            m[static_cast<std::size_t>(r)][static_cast<std::size_t>(c)] = static_cast<float>((r * 7 + c * 3 + seed) % 9 - 4);
    return m;
}

// ldmatrix.x4 (.trans): lanes 8j..8j+7 give (row, col) of the 8-element rows of matrix j; lane L gets
// in register j row L/4, elements 2(L%4), 2(L%4)+1 of matrix j (of its transpose).
std::array<std::array<Reg, 4>, 32> ldmatrix_x4(const Mat& m, const std::array<std::pair<int, int>, 32>& addr, bool trans) {
    std::array<std::array<Reg, 4>, 32> out{};
    for (int j = 0; j < 4; ++j) {
        float mj[8][8];
        for (int r = 0; r < 8; ++r)
            for (int c = 0; c < 8; ++c) {
                const auto [row, col] = addr[static_cast<std::size_t>(8 * j + r)];
                mj[r][c] = m[static_cast<std::size_t>(row)][static_cast<std::size_t>(col + c)];
            }
        for (int lane = 0; lane < 32; ++lane) {
            const int r = lane / 4, c = 2 * (lane % 4);
            out[static_cast<std::size_t>(lane)][static_cast<std::size_t>(j)] =
                trans ? Reg{mj[c][r], mj[c + 1][r]} : Reg{mj[r][c], mj[r][c + 1]};
        }
    }
    return out;
}

// mma.m16n8k16 with the PTX ISA's fragment tables: a[lane] 4 registers (a0..a7), b[lane] 2 (b0..b3),
// c[lane] 4 fp32 values; c += A B.
void mma(const std::array<std::array<Reg, 4>, 32>& a, const std::array<std::array<Reg, 2>, 32>& b,
         std::array<std::array<float, 4>, 32>& c) {
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane % 4;
        for (int i = 0; i < 8; ++i) {
            const Reg& rg = a[static_cast<std::size_t>(lane)][static_cast<std::size_t>(i / 2)];
            const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
            const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
            A[row][col] = i % 2 == 0 ? rg.lo : rg.hi;
        }
        for (int i = 0; i < 4; ++i) {
            const Reg& rg = b[static_cast<std::size_t>(lane)][static_cast<std::size_t>(i / 2)];
            const int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
            B[row][g] = i % 2 == 0 ? rg.lo : rg.hi;
        }
    }
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane % 4;
        for (int i = 0; i < 4; ++i) {
            const int row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
            float sum = 0;
            for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
            c[static_cast<std::size_t>(lane)][static_cast<std::size_t>(i)] += sum;
        }
    }
}

std::array<std::pair<int, int>, 32> addresses(int (*row)(int), int (*col)(int), int r0, int c0) {
    std::array<std::pair<int, int>, 32> a{};
    for (int lane = 0; lane < 32; ++lane) a[static_cast<std::size_t>(lane)] = {r0 + row(lane), c0 + col(lane)};
    return a;
}

// B registers of n-tile `half` (0 or 1) of an x4 load: registers 2 half, 2 half + 1.
std::array<std::array<Reg, 2>, 32> b_tile(const std::array<std::array<Reg, 4>, 32>& x4, int half) {
    std::array<std::array<Reg, 2>, 32> b{};
    for (int lane = 0; lane < 32; ++lane)
        b[static_cast<std::size_t>(lane)] = {x4[static_cast<std::size_t>(lane)][static_cast<std::size_t>(2 * half)],
                                             x4[static_cast<std::size_t>(lane)][static_cast<std::size_t>(2 * half + 1)]};
    return b;
}

TEST(FragmentLayout, ScoresFromRowMajorQAndK) {
    // S = Q K^T for 16 rows x 16 keys over 32 dims (two k-steps), Q at rows 16.., keys at rows 32..
    namespace fr = kernels::cuda::frag;
    const Mat q = numbered(48, 32, 1), k = numbered(64, 32, 5);
    std::array<std::array<std::array<float, 4>, 32>, 2> s{};
    for (int kk = 0; kk < 2; ++kk) {
        const auto a = ldmatrix_x4(q, addresses(fr::a_row, fr::a_col, 16, 16 * kk), false);
        const auto b = ldmatrix_x4(k, addresses(fr::bnk_row, fr::bnk_col, 32, 16 * kk), false);
        mma(a, b_tile(b, 0), s[0]);
        mma(a, b_tile(b, 1), s[1]);
    }
    for (int nt = 0; nt < 2; ++nt)
        for (int lane = 0; lane < 32; ++lane)
            for (int i = 0; i < 4; ++i) {
                const int r = fr::c_row(lane, i), c = nt * 8 + fr::c_col(lane, i);
                float want = 0;
                for (int d = 0; d < 32; ++d)
                    want += q[static_cast<std::size_t>(16 + r)][static_cast<std::size_t>(d)] * k[static_cast<std::size_t>(32 + c)][static_cast<std::size_t>(d)];
                ASSERT_EQ(s[static_cast<std::size_t>(nt)][static_cast<std::size_t>(lane)][static_cast<std::size_t>(i)], want)
                    << "lane " << lane << " value " << i << " n-tile " << nt;
            }
}

TEST(FragmentLayout, AccumulatorsAsTheNextAOperand) {
    // O = P V: P is a 16 x 16 accumulator (two n-tiles) repacked as A; V [key][dim] through .trans.
    namespace fr = kernels::cuda::frag;
    const Mat p = numbered(16, 16, 2), v = numbered(32, 40, 7);
    std::array<std::array<float, 4>, 32> pc0{}, pc1{};
    for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) {
            pc0[static_cast<std::size_t>(lane)][static_cast<std::size_t>(i)] = p[static_cast<std::size_t>(fr::c_row(lane, i))][static_cast<std::size_t>(fr::c_col(lane, i))];
            pc1[static_cast<std::size_t>(lane)][static_cast<std::size_t>(i)] = p[static_cast<std::size_t>(fr::c_row(lane, i))][static_cast<std::size_t>(8 + fr::c_col(lane, i))];
        }
    std::array<std::array<Reg, 4>, 32> a{};
    for (std::size_t lane = 0; lane < 32; ++lane)
        a[lane] = {Reg{pc0[lane][0], pc0[lane][1]}, Reg{pc0[lane][2], pc0[lane][3]}, Reg{pc1[lane][0], pc1[lane][1]},
                   Reg{pc1[lane][2], pc1[lane][3]}};
    // Keys 16..31 of V, dims 24..39.
    const auto b = ldmatrix_x4(v, addresses(fr::bkn_row, fr::bkn_col, 16, 24), true);
    std::array<std::array<std::array<float, 4>, 32>, 2> o{};
    mma(a, b_tile(b, 0), o[0]);
    mma(a, b_tile(b, 1), o[1]);
    for (int nt = 0; nt < 2; ++nt)
        for (int lane = 0; lane < 32; ++lane)
            for (int i = 0; i < 4; ++i) {
                const int r = fr::c_row(lane, i), c = nt * 8 + fr::c_col(lane, i);
                float want = 0;
                for (int j = 0; j < 16; ++j)
                    want += p[static_cast<std::size_t>(r)][static_cast<std::size_t>(j)] * v[static_cast<std::size_t>(16 + j)][static_cast<std::size_t>(24 + c)];
                ASSERT_EQ(o[static_cast<std::size_t>(nt)][static_cast<std::size_t>(lane)][static_cast<std::size_t>(i)], want)
                    << "lane " << lane << " value " << i << " n-tile " << nt;
            }
}

}  // namespace
}  // namespace longattn::test
