#include "longattn/block_plan.hpp"

#include <algorithm>

namespace longattn {

HullTree::HullTree(const std::int64_t* pos, std::int64_t n, std::int64_t tile)
    : n_(n), tile_(std::max<std::int64_t>(tile, 1)), tiles_((n + tile_ - 1) / tile_) {
    const auto tiles = static_cast<std::size_t>(tiles_);
    lo_.assign(4 * std::max<std::size_t>(tiles, 1), 0);
    end_.assign(lo_.size(), 0);
    leaf_lo_.resize(tiles);
    leaf_end_.resize(tiles);
    run_.resize(tiles);
    for (std::int64_t t = 0; t < tiles_; ++t) {
        const std::int64_t* p = pos + t * tile_;
        const std::int64_t m = tile_rows(t);
        const auto [mn, mx] = std::minmax_element(p, p + m);
        leaf_lo_[static_cast<std::size_t>(t)] = *mn;
        leaf_end_[static_cast<std::size_t>(t)] = *mx + 1;
        bool run = true;
        for (std::int64_t j = 1; j < m && run; ++j) run = p[j] == p[0] + j;
        run_[static_cast<std::size_t>(t)] = run ? p[0] : kScattered;
    }
    if (tiles_ > 0) build(1, 0, tiles_);
}

void HullTree::build(std::size_t node, std::int64_t a, std::int64_t b) {
    if (b - a == 1) {
        lo_[node] = leaf_lo_[static_cast<std::size_t>(a)];
        end_[node] = leaf_end_[static_cast<std::size_t>(a)];
        return;
    }
    const std::int64_t mid = (a + b) / 2;
    build(2 * node, a, mid);
    build(2 * node + 1, mid, b);
    lo_[node] = std::min(lo_[2 * node], lo_[2 * node + 1]);
    end_[node] = std::max(end_[2 * node], end_[2 * node + 1]);
}

namespace {

void append(std::vector<TileRun>& out, std::size_t begin, std::int64_t first, std::int64_t count, BlockClass c) {
    if (c == BlockClass::full && out.size() > begin && out.back().cls == BlockClass::full &&
        out.back().first + out.back().count == first) {
        out.back().count += count;
        return;
    }
    out.push_back({first, count, c});
}

struct Collector {
    const Pattern& pat;
    const HullTree& tree;
    bool tree_holds_queries;
    std::int64_t lo, end, t0, t1;
    std::vector<TileRun>& out;
    std::size_t begin;

    void visit(std::size_t node, std::int64_t a, std::int64_t b) {
        if (b <= t0 || a >= t1) return;
        const BlockClass c = tree_holds_queries ? pat.classify(tree.node_lo(node), tree.node_end(node), lo, end)
                                                : pat.classify(lo, end, tree.node_lo(node), tree.node_end(node));
        if (c == BlockClass::empty) return;
        if (c == BlockClass::full || b - a == 1) {
            const std::int64_t f = std::max(a, t0), l = std::min(b, t1);
            if (c == BlockClass::full) return append(out, begin, f, l - f, c);
            for (std::int64_t t = f; t < l; ++t) out.push_back({t, 1, c});
            return;
        }
        const std::int64_t mid = (a + b) / 2;
        visit(2 * node, a, mid);
        visit(2 * node + 1, mid, b);
    }
};

}  // namespace

void collect_tiles(const Pattern& pat, const HullTree& tree, bool tree_holds_queries, std::int64_t lo, std::int64_t end,
                   std::vector<TileRun>& out, std::int64_t t0, std::int64_t t1) {
    if (t1 < 0 || t1 > tree.tiles()) t1 = tree.tiles();
    if (t0 >= t1 || lo >= end) return;
    Collector c{pat, tree, tree_holds_queries, lo, end, t0, t1, out, out.size()};
    c.visit(1, 0, tree.tiles());
}

RowIntervals::RowIntervals(const Pattern& pat, const std::int64_t* q_pos, std::int64_t n, std::int64_t* a, std::int64_t* z)
    : a_(a), z_(z), n_(n), lo_(INT64_MAX), end_(INT64_MIN), amax_(INT64_MIN), zmin_(INT64_MAX) {
    for (std::int64_t r = 0; r < n; ++r) {
        pat.row_interval(q_pos[r], a[r], z[r]);
        if (a[r] < z[r]) {
            lo_ = std::min(lo_, a[r]);
            end_ = std::max(end_, z[r]);
        }
        amax_ = std::max(amax_, a[r]);
        zmin_ = std::min(zmin_, z[r]);
    }
}

BlockClass RowIntervals::classify(std::int64_t k_lo, std::int64_t k_end) const {
    if (amax_ <= k_lo && k_end <= zmin_) return BlockClass::full;
    bool any = false, all = true;
    for (std::int64_t r = 0; r < n_; ++r) {
        any = any || (a_[r] < k_end && z_[r] > k_lo && a_[r] < z_[r]);
        all = all && a_[r] <= k_lo && k_end <= z_[r];
    }
    return all ? BlockClass::full : any ? BlockClass::partial : BlockClass::empty;
}

void RowIntervals::collect(const HullTree& keys, std::vector<TileRun>& out) const {
    if (keys.tiles() > 0) collect(keys, 1, 0, keys.tiles(), out);
}

void RowIntervals::collect(const HullTree& keys, std::size_t node, std::int64_t t0, std::int64_t t1,
                           std::vector<TileRun>& out) const {
    const std::int64_t k_lo = keys.node_lo(node), k_end = keys.node_end(node);
    if (k_end <= lo_ || k_lo >= end_) return;
    if (amax_ <= k_lo && k_end <= zmin_) {
        for (std::int64_t t = t0; t < t1; ++t) out.push_back({t, 1, BlockClass::full});
        return;
    }
    if (t1 - t0 == 1) {
        const BlockClass c = classify(k_lo, k_end);
        if (c != BlockClass::empty) out.push_back({t0, 1, c});
        return;
    }
    const std::int64_t mid = (t0 + t1) / 2;
    collect(keys, 2 * node, t0, mid, out);
    collect(keys, 2 * node + 1, mid, t1, out);
}

PositionRuns position_runs(const std::int64_t* pos, std::int64_t n, std::size_t max_runs) {
    PositionRuns runs;
    for (std::int64_t i = 0; i < n; ++i) {
        if (!runs.empty() && runs.back().second == pos[i]) ++runs.back().second;
        else runs.emplace_back(pos[i], pos[i] + 1);
        if (runs.size() > max_runs) {
            const auto [lo, hi] = std::minmax_element(pos, pos + n);
            return {{*lo, *hi + 1}};
        }
    }
    return runs;
}

bool may_attend(const Pattern& pat, const PositionRuns& q_runs, const PositionRuns& k_runs) {
    for (const auto& [k0, k1] : k_runs)
        for (const auto& [q0, q1] : q_runs)
            if (pat.classify(q0, q1, k0, k1) != BlockClass::empty) return true;
    return false;
}

}  // namespace longattn
