// Layouts: exact worked examples and round trips global <-> (rank, local row) for many (n, p).
#include <gtest/gtest.h>

#include "longattn/error.hpp"
#include "longattn/layout.hpp"

using namespace longattn;

TEST(Layout, WorkedExamples) {
    EXPECT_EQ(Layout(LayoutKind::contiguous, 10, 3).positions(0), (std::vector<std::int64_t>{0, 1, 2, 3}));
    EXPECT_EQ(Layout(LayoutKind::contiguous, 10, 3).positions(2), (std::vector<std::int64_t>{7, 8, 9}));
    EXPECT_EQ(Layout(LayoutKind::zigzag, 8, 2).positions(0), (std::vector<std::int64_t>{0, 1, 6, 7}));
    EXPECT_EQ(Layout(LayoutKind::zigzag, 8, 2).positions(1), (std::vector<std::int64_t>{2, 3, 4, 5}));
    // 11 tokens in 4 zigzag chunks of sizes 3,3,3,2: rank 0 = chunks 0 and 3, rank 1 = chunks 1 and 2.
    EXPECT_EQ(Layout(LayoutKind::zigzag, 11, 2).positions(0), (std::vector<std::int64_t>{0, 1, 2, 9, 10}));
    EXPECT_EQ(Layout(LayoutKind::zigzag, 11, 2).positions(1), (std::vector<std::int64_t>{3, 4, 5, 6, 7, 8}));
    EXPECT_EQ(Layout(LayoutKind::striped, 7, 3).positions(0), (std::vector<std::int64_t>{0, 3, 6}));
    EXPECT_EQ(Layout(LayoutKind::striped, 7, 3).positions(2), (std::vector<std::int64_t>{2, 5}));
    EXPECT_EQ(Layout(LayoutKind::contiguous, 2, 4).local_count(3), 0);  // fewer tokens than ranks
}

TEST(Layout, RoundTripsForManySizes) {
    for (auto kind : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped})
        for (int p = 1; p <= 9; ++p)
            for (std::int64_t n = 0; n <= 70; ++n) {
                Layout l(kind, n, p);
                std::vector<int> seen(static_cast<std::size_t>(n), 0);
                std::int64_t total = 0, lo = n, hi = 0;
                for (int r = 0; r < p; ++r) {
                    const auto pos = l.positions(r);
                    ASSERT_EQ(static_cast<std::int64_t>(pos.size()), l.local_count(r));
                    total += l.local_count(r);
                    lo = std::min(lo, l.local_count(r));
                    hi = std::max(hi, l.local_count(r));
                    for (std::size_t i = 0; i < pos.size(); ++i) {
                        ASSERT_GE(pos[i], 0);
                        ASSERT_LT(pos[i], n);
                        ++seen[static_cast<std::size_t>(pos[i])];
                        const auto [rr, li] = l.locate(pos[i]);
                        ASSERT_EQ(rr, r) << layout_name(kind) << " n=" << n << " p=" << p << " g=" << pos[i];
                        ASSERT_EQ(li, static_cast<std::int64_t>(i));
                    }
                }
                ASSERT_EQ(total, n);
                for (int s : seen) ASSERT_EQ(s, 1);
                ASSERT_LE(hi - lo, kind == LayoutKind::zigzag ? 2 : 1) << layout_name(kind) << " n=" << n << " p=" << p;
            }
}

TEST(Layout, BadInputNamesTheOption) {
    EXPECT_THROW(parse_layout("zig-zag"), Error);
    try {
        parse_layout("zig-zag");
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("contiguous, zigzag or striped"), std::string::npos);
    }
    EXPECT_THROW(Layout(LayoutKind::striped, 10, 0), Error);
}
