// The pattern engine against its own element predicate, and the predicate against hand-worked values.
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "longattn/error.hpp"
#include "longattn/pattern.hpp"

using longattn::BlockClass;
using longattn::Pattern;
using longattn::PatternSpec;
using longattn::Window;

namespace {

std::int64_t brute_count(const Pattern& p, std::int64_t q0, std::int64_t q1, std::int64_t k0, std::int64_t k1) {
    std::int64_t n = 0;
    for (auto q = q0; q < q1; ++q)
        for (auto k = k0; k < k1; ++k) n += p.allowed(q, k);
    return n;
}

// A random combination of every pattern kind, with odd block sizes and documents.
PatternSpec random_spec(std::mt19937_64& rng, std::int64_t n) {
    auto coin = [&](double pr) { return std::uniform_real_distribution<>(0, 1)(rng) < pr; };
    auto uni = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng); };
    PatternSpec s;
    s.causal = coin(0.5);
    if (coin(0.4)) {
        s.doc_bounds = {0};
        while (s.doc_bounds.back() < n) s.doc_bounds.push_back(std::min(n, s.doc_bounds.back() + uni(1, n / 2)));
    }
    s.block = uni(1, 13);
    if (coin(0.5)) s.window = Window{coin(0.2) ? -1 : uni(0, 9), coin(0.2) ? -1 : uni(0, 9)};
    if (coin(0.3)) s.global_first = uni(1, 4);
    if (coin(0.3))
        for (int i = 0; i < 3; ++i) s.global_list.push_back(uni(0, n - 1));
    if (coin(0.3)) {
        s.block_mask_rows = uni(1, n / s.block + 2);
        s.block_mask_cols = uni(1, n / s.block + 2);
        for (std::int64_t i = 0; i < s.block_mask_rows * s.block_mask_cols; ++i) s.block_mask.push_back(coin(0.3));
    }
    if (coin(0.3)) s.stride = uni(1, 4);
    if (coin(0.3)) {
        s.random_blocks = uni(1, 3);
        s.random_seed = rng();
        s.seq_len = n;
    }
    return s;
}

TEST(Pattern, WorkedExampleFromHeader) {
    PatternSpec s;
    s.causal = true;
    s.window = Window{2, 0};
    s.global_first = 1;
    Pattern p(s);
    std::vector<std::int64_t> seen;
    for (std::int64_t k = 0; k < 6; ++k)
        if (p.allowed(4, k)) seen.push_back(k);
    EXPECT_EQ(seen, (std::vector<std::int64_t>{0, 2, 3, 4}));
    // Global query 0 sees only itself under causal; a non-causal global query would see everything.
    EXPECT_EQ(p.count_allowed(0, 1, 0, 6), 1);
}

TEST(Pattern, DenseAndCausalCounts) {
    Pattern dense;
    EXPECT_EQ(dense.count_allowed(0, 7, 0, 9), 63);
    EXPECT_EQ(dense.classify(3, 5, 100, 200), BlockClass::full);
    PatternSpec s;
    s.causal = true;
    Pattern causal(s);
    EXPECT_EQ(causal.count_allowed(0, 100, 0, 100), 100 * 101 / 2);
    EXPECT_EQ(causal.classify(0, 10, 10, 20), BlockClass::empty);
    EXPECT_EQ(causal.classify(10, 20, 0, 11), BlockClass::full);
    EXPECT_EQ(causal.classify(10, 20, 0, 12), BlockClass::partial);
}

TEST(Pattern, WindowMatchesFlashAttentionConvention) {
    PatternSpec s;
    s.window = Window{3, 1};  // k in [q-3, q+1]
    Pattern p(s);
    for (std::int64_t k = 0; k < 20; ++k) EXPECT_EQ(p.allowed(10, k), k >= 7 && k <= 11) << k;
    s.window = Window{-1, 0};  // unbounded left, no future: same pairs as causal
    Pattern left_unbounded(s);
    PatternSpec c;
    c.causal = true;
    Pattern causal(c);
    for (std::int64_t q = 0; q < 30; ++q)
        for (std::int64_t k = 0; k < 30; ++k) EXPECT_EQ(left_unbounded.allowed(q, k), causal.allowed(q, k));
}

TEST(Pattern, DocumentsAndTailPadding) {
    PatternSpec s;
    s.doc_bounds = {0, 3, 7, 10};
    Pattern p(s);
    EXPECT_EQ(p.doc_of(0), 0);
    EXPECT_EQ(p.doc_of(2), 0);
    EXPECT_EQ(p.doc_of(3), 1);
    EXPECT_EQ(p.doc_of(9), 2);
    EXPECT_EQ(p.doc_of(10), 3);  // past the last document: a tail of its own
    EXPECT_TRUE(p.allowed(4, 6));
    EXPECT_FALSE(p.allowed(2, 3));
    EXPECT_FALSE(p.allowed(9, 10));
    EXPECT_EQ(p.count_allowed(0, 10, 0, 10), 9 + 16 + 9);
}

TEST(Pattern, GlobalTokensAreRowsAndColumns) {
    PatternSpec s;
    s.window = Window{0, 0};
    s.global_list = {5};
    Pattern p(s);
    EXPECT_TRUE(p.allowed(5, 0));   // global query sees everything
    EXPECT_TRUE(p.allowed(0, 5));   // everyone sees a global key
    EXPECT_TRUE(p.allowed(2, 2));   // window
    EXPECT_FALSE(p.allowed(2, 3));
    EXPECT_EQ(p.count_allowed(0, 10, 0, 10), 10 + 9 + 9);  // diagonal + row 5 + column 5 (minus overlaps)
}

TEST(Pattern, BlockSparseStridedExactValues) {
    PatternSpec s;
    s.block = 4;
    s.block_mask_rows = 2;
    s.block_mask_cols = 2;
    s.block_mask = {1, 0, 0, 1};
    Pattern bm(s);
    EXPECT_TRUE(bm.allowed(3, 0));
    EXPECT_FALSE(bm.allowed(3, 4));
    EXPECT_TRUE(bm.allowed(7, 7));
    EXPECT_FALSE(bm.allowed(8, 8));  // outside the mask: not allowed
    EXPECT_EQ(bm.classify(0, 4, 0, 4), BlockClass::full);
    EXPECT_EQ(bm.classify(0, 4, 4, 8), BlockClass::empty);
    PatternSpec t;
    t.block = 2;
    t.stride = 3;  // key blocks 2, 5, 8, ... -> keys 4,5, 10,11, ...
    Pattern st(t);
    std::vector<std::int64_t> keys;
    for (std::int64_t k = 0; k < 14; ++k)
        if (st.allowed(0, k)) keys.push_back(k);
    EXPECT_EQ(keys, (std::vector<std::int64_t>{4, 5, 10, 11}));
}

TEST(Pattern, RandomBlocksAreSeededAndIdenticalEverywhere) {
    PatternSpec s;
    s.block = 8;
    s.random_blocks = 3;
    s.random_seed = 42;
    s.seq_len = 200;
    Pattern a(s), b(s);
    s.random_seed = 43;
    Pattern c(s);
    int differ = 0;
    for (std::int64_t qb = 0; qb < 25; ++qb) {
        std::set<std::int64_t> blocks;
        for (std::int64_t kb = 0; kb < 25; ++kb) {
            EXPECT_EQ(a.allowed(qb * 8, kb * 8), b.allowed(qb * 8, kb * 8));
            differ += a.allowed(qb * 8, kb * 8) != c.allowed(qb * 8, kb * 8);
            if (a.allowed(qb * 8, kb * 8)) blocks.insert(kb);
        }
        EXPECT_EQ(blocks.size(), 3u) << "query block " << qb;
    }
    EXPECT_GT(differ, 0);
    // Causal random draws only from past blocks, so every row still gets r blocks where it can.
    s.causal = true;
    Pattern causal(s);
    for (std::int64_t qb = 0; qb < 25; ++qb) {
        EXPECT_EQ(causal.count_allowed(qb * 8 + 7, qb * 8 + 8, 0, 200), std::min<std::int64_t>(3, qb + 1) * 8 - 0)
            << qb;
    }
}

// The heart: for random patterns, the counter and the classifier agree exactly with the predicate
// on every rectangle, including uneven ranges that cut blocks and documents.
TEST(Pattern, ClassifierExactOnRandomPatterns) {
    std::mt19937_64 rng(7);
    const std::int64_t n = 41;
    for (int trial = 0; trial < 2000; ++trial) {
        Pattern p(random_spec(rng, n));
        for (int r = 0; r < 40; ++r) {
            std::uniform_int_distribution<std::int64_t> pos(0, n);
            std::int64_t q0 = pos(rng), q1 = pos(rng), k0 = pos(rng), k1 = pos(rng);
            if (q0 > q1) std::swap(q0, q1);
            if (k0 > k1) std::swap(k0, k1);
            const std::int64_t truth = brute_count(p, q0, q1, k0, k1);
            ASSERT_EQ(p.count_allowed(q0, q1, k0, k1), truth) << p.describe() << " [" << q0 << "," << q1 << ")x["
                                                              << k0 << "," << k1 << ")";
            const BlockClass want = truth == 0                        ? BlockClass::empty
                                    : truth == (q1 - q0) * (k1 - k0) ? BlockClass::full
                                                                      : BlockClass::partial;
            ASSERT_EQ(p.classify(q0, q1, k0, k1), want) << p.describe();
        }
    }
}

// Every rectangle of a small grid, for a handful of random patterns.
TEST(Pattern, ClassifierExhaustiveOnSmallGrid) {
    std::mt19937_64 rng(5);
    const std::int64_t n = 15;
    for (int trial = 0; trial < 25; ++trial) {
        Pattern p(random_spec(rng, n));
        for (std::int64_t q0 = 0; q0 <= n; ++q0)
            for (std::int64_t q1 = q0 + 1; q1 <= n; ++q1)
                for (std::int64_t k0 = 0; k0 <= n; ++k0)
                    for (std::int64_t k1 = k0 + 1; k1 <= n; ++k1) {
                        const std::int64_t truth = brute_count(p, q0, q1, k0, k1);
                        ASSERT_EQ(p.count_allowed(q0, q1, k0, k1), truth) << p.describe();
                        const BlockClass c = p.classify(q0, q1, k0, k1);
                        ASSERT_EQ(c == BlockClass::empty, truth == 0) << p.describe();
                        ASSERT_EQ(c == BlockClass::full, truth == (q1 - q0) * (k1 - k0)) << p.describe();
                    }
    }
}

TEST(Pattern, MaskRowMatchesPredicate) {
    std::mt19937_64 rng(11);
    const std::int64_t n = 53;
    std::vector<std::int64_t> keys(n);
    for (std::int64_t i = 0; i < n; ++i) keys[i] = (i * 17) % n;  // not in order
    std::vector<std::uint8_t> row(n);
    for (int trial = 0; trial < 200; ++trial) {
        Pattern p(random_spec(rng, n));
        for (std::int64_t q = 0; q < n; ++q) {
            p.mask_row(q, keys.data(), n, row.data());
            for (std::int64_t j = 0; j < n; ++j) ASSERT_EQ(row[j], p.allowed(q, keys[j])) << p.describe();
        }
    }
}

TEST(Pattern, RowIntervalsMatchPredicateWhenClaimed) {
    std::mt19937_64 rng(17);
    const std::int64_t n = 47;
    int claimed = 0;
    for (int trial = 0; trial < 400; ++trial) {
        Pattern p(random_spec(rng, n));
        const auto& s = p.spec();
        const bool only_gates_and_window = s.global_first == 0 && s.global_list.empty() && s.block_mask.empty() &&
                                           s.stride == 0 && s.random_blocks == 0;
        ASSERT_EQ(p.rows_are_intervals(), only_gates_and_window) << p.describe();
        if (!p.rows_are_intervals()) continue;
        ++claimed;
        for (std::int64_t q = 0; q < n; ++q) {
            std::int64_t lo, hi;
            p.row_interval(q, lo, hi);
            for (std::int64_t k = 0; k < n + 3; ++k)
                ASSERT_EQ(k >= lo && k < hi, p.allowed(q, k)) << p.describe() << " q=" << q << " k=" << k;
        }
    }
    EXPECT_GT(claimed, 50);
}

// Shards of a zigzag or striped layout hand the kernels position sets with holes; classifying
// through the hull must never call a block EMPTY or FULL when it is not.
TEST(Pattern, PositionSetClassificationIsSound) {
    std::mt19937_64 rng(13);
    const std::int64_t n = 47;
    for (int trial = 0; trial < 300; ++trial) {
        Pattern p(random_spec(rng, n));
        std::vector<std::int64_t> qs, ks;
        std::int64_t stride = std::uniform_int_distribution<std::int64_t>(1, 4)(rng);
        for (std::int64_t i = rng() % stride; i < n; i += stride) qs.push_back(i);
        for (std::int64_t i = 0; i < n; ++i)
            if (rng() % 3 == 0) ks.push_back(i);
        if (ks.empty()) ks.push_back(0);
        std::int64_t allowed = 0;
        for (auto q : qs)
            for (auto k : ks) allowed += p.allowed(q, k);
        const BlockClass c = p.classify_positions(qs.data(), static_cast<std::int64_t>(qs.size()), ks.data(),
                                                  static_cast<std::int64_t>(ks.size()));
        if (c == BlockClass::empty) {
            ASSERT_EQ(allowed, 0) << p.describe();
        }
        if (c == BlockClass::full) {
            ASSERT_EQ(allowed, static_cast<std::int64_t>(qs.size() * ks.size())) << p.describe();
        }
    }
}

TEST(Pattern, BadSpecsNameTheField) {
    auto message_of = [](PatternSpec s) {
        try {
            Pattern p(std::move(s));
        } catch (const longattn::Error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    PatternSpec s;
    s.doc_bounds = {0, 5, 5};
    EXPECT_NE(message_of(s).find("pattern.doc_bounds"), std::string::npos);
    s = {};
    s.window = Window{-2, 0};
    EXPECT_NE(message_of(s).find("pattern.window.left"), std::string::npos);
    s = {};
    s.block = 0;
    EXPECT_NE(message_of(s).find("pattern.block"), std::string::npos);
    s = {};
    s.block_mask = {1, 0, 1};
    s.block_mask_rows = 2;
    s.block_mask_cols = 2;
    EXPECT_NE(message_of(s).find("pattern.block_mask"), std::string::npos);
    s = {};
    s.random_blocks = 2;
    EXPECT_NE(message_of(s).find("pattern.seq_len"), std::string::npos);
    s = {};
    s.softcap = -1.0f;
    EXPECT_NE(message_of(s).find("pattern.softcap"), std::string::npos);
}

}  // namespace
