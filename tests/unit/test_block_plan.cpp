// The block planner (longattn/block_plan.hpp) against the element predicate: for every tile pair of
// every pattern of the zoo, over consecutive and scattered positions, a tile with an allowed pair is
// listed, a tile listed FULL has every pair allowed, and a listed PARTIAL tile with consecutive
// positions on both sides really is partial.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "longattn/block_plan.hpp"
#include "longattn/layout.hpp"
#include "testing.hpp"

using namespace longattn;

namespace {

BlockClass brute_class(const Pattern& pat, const std::int64_t* q, std::int64_t nq, const std::int64_t* k, std::int64_t nk) {
    std::int64_t n = 0;
    for (std::int64_t i = 0; i < nq; ++i)
        for (std::int64_t j = 0; j < nk; ++j) n += pat.allowed(q[i], k[j]);
    return n == 0 ? BlockClass::empty : n == nq * nk ? BlockClass::full : BlockClass::partial;
}

// Every tile of tree's side as its class in the runs (empty where not listed).
std::vector<BlockClass> expand(const std::vector<TileRun>& runs, std::int64_t tiles) {
    std::vector<BlockClass> out(static_cast<std::size_t>(tiles), BlockClass::empty);
    std::int64_t last = -1;
    for (const TileRun& r : runs) {
        EXPECT_GT(r.first, last) << "runs in tile order, without overlap";
        EXPECT_GE(r.count, 1);
        EXPECT_NE(r.cls, BlockClass::empty);
        for (std::int64_t t = r.first; t < r.first + r.count; ++t) out[static_cast<std::size_t>(t)] = r.cls;
        last = r.first + r.count - 1;
    }
    return out;
}

void check_listing(const Pattern& pat, const std::vector<BlockClass>& got, const HullTree& tree, const std::int64_t* tree_pos,
                   bool tree_holds_queries, const std::int64_t* other, std::int64_t n_other, bool exact,
                   const std::string& what) {
    for (std::int64_t t = 0; t < tree.tiles(); ++t) {
        const std::int64_t* tp = tree_pos + t * tree.tile();
        const BlockClass want = tree_holds_queries ? brute_class(pat, tp, tree.tile_rows(t), other, n_other)
                                                   : brute_class(pat, other, n_other, tp, tree.tile_rows(t));
        const BlockClass g = got[static_cast<std::size_t>(t)];
        SCOPED_TRACE(what + " tile " + std::to_string(t));
        if (want != BlockClass::empty) {
            EXPECT_NE(g, BlockClass::empty) << "a tile with an allowed pair was dropped";
        }
        if (g == BlockClass::full) {
            EXPECT_EQ(want, BlockClass::full) << "FULL claimed wrongly";
        }
        if (exact) {
            EXPECT_EQ(g, want);
        }
    }
}

struct Positions {
    const char* name;
    std::vector<std::int64_t> pos;
    bool consecutive;
};

std::vector<Positions> position_sets(std::int64_t n) {
    std::vector<std::int64_t> all(static_cast<std::size_t>(n));
    std::iota(all.begin(), all.end(), 0);
    // Zigzag over 3 ranks, rank after rank: two runs per rank.
    std::vector<std::int64_t> zz;
    const Layout zl(LayoutKind::zigzag, n, 3);
    for (int r = 0; r < 3; ++r)
        for (std::int64_t p : zl.positions(r)) zz.push_back(p);
    std::vector<std::int64_t> shuffled = all;
    std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937_64(7));
    return {{"consecutive", all, true}, {"zigzag", zz, false}, {"shuffled", shuffled, false}};
}

TEST(BlockPlan, CollectTilesNeverDropsAnAllowedTileNorClaimsFullWrongly) {
    const std::int64_t n = 203;
    for (const auto& ns : test::pattern_zoo(n, 4)) {
        const Pattern pat(ns.spec);
        for (const Positions& keys : position_sets(n)) {
            const HullTree tree(keys.pos.data(), n, 16);
            for (std::int64_t q0 = 0; q0 < n; q0 += 37) {
                const std::int64_t nq = std::min<std::int64_t>(29, n - q0);
                std::vector<std::int64_t> q(static_cast<std::size_t>(nq));
                std::iota(q.begin(), q.end(), q0);
                std::vector<TileRun> runs;
                collect_tiles(pat, tree, false, q0, q0 + nq, runs);
                // Exact where the hulls are: consecutive keys against a consecutive query range.
                check_listing(pat, expand(runs, tree.tiles()), tree, keys.pos.data(), false, q.data(), nq, keys.consecutive,
                              std::string(ns.name) + " keys " + keys.name);
                // The same with the queries in the tree, restricted to tiles [2, 6).
                const HullTree qtree(keys.pos.data(), n, 24);
                runs.clear();
                collect_tiles(pat, qtree, true, q0, q0 + nq, runs, 2, 6);
                for (const TileRun& r : runs) EXPECT_TRUE(r.first >= 2 && r.first + r.count <= 6);
                const std::vector<BlockClass> got = expand(runs, qtree.tiles());
                for (std::int64_t t = 0; t < qtree.tiles(); ++t) {
                    const BlockClass want = t < 2 || t >= 6 ? BlockClass::empty
                                                            : brute_class(pat, keys.pos.data() + t * qtree.tile(),
                                                                          qtree.tile_rows(t), q.data(), nq);
                    SCOPED_TRACE(std::string(ns.name) + " queries " + keys.name + " tile " + std::to_string(t));
                    if (want != BlockClass::empty) {
                        EXPECT_NE(got[static_cast<std::size_t>(t)], BlockClass::empty);
                    }
                    if (got[static_cast<std::size_t>(t)] == BlockClass::full) {
                        EXPECT_EQ(want, BlockClass::full);
                    }
                    if (keys.consecutive) {
                        EXPECT_EQ(got[static_cast<std::size_t>(t)], want);
                    }
                }
            }
        }
    }
}

TEST(BlockPlan, RowIntervalsListExactlyTheTilesTheRowsReach) {
    const std::int64_t n = 203;
    for (const auto& ns : test::pattern_zoo(n, 4)) {
        const Pattern pat(ns.spec);
        if (!pat.rows_are_intervals()) continue;
        const Positions keys = position_sets(n)[0];
        const HullTree tree(keys.pos.data(), n, 16);
        for (std::int64_t q0 = 0; q0 < n; q0 += 41) {
            const std::int64_t nq = std::min<std::int64_t>(48, n - q0);
            std::vector<std::int64_t> q(static_cast<std::size_t>(nq)), a(q.size()), z(q.size());
            std::iota(q.begin(), q.end(), q0);
            const RowIntervals rows(pat, q.data(), nq, a.data(), z.data());
            for (std::int64_t r = 0; r < nq; ++r)
                for (std::int64_t k = 0; k < n; ++k)
                    ASSERT_EQ(pat.allowed(q[static_cast<std::size_t>(r)], k), a[static_cast<std::size_t>(r)] <= k && k < z[static_cast<std::size_t>(r)]);
            std::vector<TileRun> runs;
            rows.collect(tree, runs);
            check_listing(pat, expand(runs, tree.tiles()), tree, keys.pos.data(), false, q.data(), nq, true, ns.name);
        }
    }
}

TEST(BlockPlan, WorkedExampleOfTheHeader) {
    PatternSpec s;
    s.causal = true;
    const Pattern pat(s);
    std::vector<std::int64_t> keys(256);
    std::iota(keys.begin(), keys.end(), 0);
    const HullTree tree(keys.data(), 256, 64);
    ASSERT_EQ(tree.tiles(), 4);
    EXPECT_EQ(tree.run_start(2), 128);
    std::vector<TileRun> runs;
    collect_tiles(pat, tree, false, 128, 192, runs);
    ASSERT_EQ(runs.size(), 2u);
    EXPECT_EQ(runs[0].first, 0);
    EXPECT_EQ(runs[0].count, 2);
    EXPECT_EQ(runs[0].cls, BlockClass::full);
    EXPECT_EQ(runs[1].first, 2);
    EXPECT_EQ(runs[1].count, 1);
    EXPECT_EQ(runs[1].cls, BlockClass::partial);
}

TEST(BlockPlan, HullTreeLeavesAndRuns) {
    const std::vector<std::int64_t> pos = {5, 6, 7, 1, 9, 2, 3, 4, 100};
    const HullTree t(pos.data(), 9, 3);
    ASSERT_EQ(t.tiles(), 3);
    EXPECT_EQ(t.tile_lo(0), 5);
    EXPECT_EQ(t.tile_end(0), 8);
    EXPECT_EQ(t.run_start(0), 5);
    EXPECT_EQ(t.tile_lo(1), 1);
    EXPECT_EQ(t.tile_end(1), 10);
    EXPECT_EQ(t.run_start(1), kScattered);
    EXPECT_EQ(t.node_lo(1), 1);
    EXPECT_EQ(t.node_end(1), 101);
    const HullTree short_tail(pos.data(), 8, 3);
    EXPECT_EQ(short_tail.tile_rows(2), 2);
    EXPECT_EQ(short_tail.run_start(2), 3);
}

TEST(BlockPlan, PositionRunsAndMayAttend) {
    const std::vector<std::int64_t> zz = {0, 1, 2, 9, 10, 11};
    const PositionRuns runs = position_runs(zz.data(), 6);
    ASSERT_EQ(runs.size(), 2u);
    EXPECT_EQ(runs[0], std::make_pair(std::int64_t{0}, std::int64_t{3}));
    EXPECT_EQ(runs[1], std::make_pair(std::int64_t{9}, std::int64_t{12}));
    const PositionRuns hull = position_runs(zz.data(), 6, 1);
    ASSERT_EQ(hull.size(), 1u);
    EXPECT_EQ(hull[0], std::make_pair(std::int64_t{0}, std::int64_t{12}));
    PatternSpec s;
    s.causal = true;
    const Pattern causal(s);
    // Queries 0..2 see nothing of keys 3..8; queries 9..11 see them all.
    EXPECT_FALSE(may_attend(causal, {{0, 3}}, {{3, 9}}));
    EXPECT_TRUE(may_attend(causal, runs, {{3, 9}}));
    EXPECT_FALSE(may_attend(causal, runs, {}));
}

}  // namespace
