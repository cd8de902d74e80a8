#pragma once
// The block planner: which tiles of (query rows x key rows) a Pattern allows, for rows named by any
// global positions. Every user of tiles asks it: the CPU forward (key blocks by query block), the
// CPU backward (query blocks by key block), the CUDA tile plan (both ways) and the strategies'
// needed-matrix (which rank's keys some other rank's queries may attend).
//
// The rows of one side are cut into tiles of `tile` consecutive rows, and a HullTree holds the
// position hull of every tile and of every range of tiles (a segment tree). A query against the
// hull of the other side classifies a range's hull through Pattern::classify: EMPTY and FULL are
// exact for a rectangle, so they hold for every tile inside the range and only PARTIAL ranges are
// split. A window over a long sequence then costs a few classifications per tile of the other side
// instead of one per pair.
//
// Worked example: causal, keys at positions 0..255 in tiles of 64, the query hull [128, 192):
//   collect_tiles -> {first 0, count 2, FULL}, {first 2, count 1, PARTIAL}; tile 3 is EMPTY.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "longattn/pattern.hpp"

namespace longattn {

// HullTree::run_start of a tile whose positions are not consecutive.
inline constexpr std::int64_t kScattered = std::numeric_limits<std::int64_t>::min();

class HullTree {
public:
    HullTree() = default;
    // pos: n positions (the caller keeps them alive only for the constructor).
    HullTree(const std::int64_t* pos, std::int64_t n, std::int64_t tile);

    std::int64_t tiles() const { return tiles_; }
    std::int64_t tile() const { return tile_; }
    std::int64_t rows() const { return n_; }
    // Rows in tile t (the last tile may be short).
    std::int64_t tile_rows(std::int64_t t) const { return std::min(tile_, n_ - t * tile_); }
    // Hull of tile t: its positions lie in [tile_lo(t), tile_end(t)).
    std::int64_t tile_lo(std::int64_t t) const { return leaf_lo_[static_cast<std::size_t>(t)]; }
    std::int64_t tile_end(std::int64_t t) const { return leaf_end_[static_cast<std::size_t>(t)]; }
    // The first position of tile t when its positions are consecutive (p, p+1, ...), else kScattered.
    std::int64_t run_start(std::int64_t t) const { return run_[static_cast<std::size_t>(t)]; }

    // Segment tree nodes: node 1 covers tiles [0, tiles), node n's children are 2n and 2n+1.
    std::int64_t node_lo(std::size_t node) const { return lo_[node]; }
    std::int64_t node_end(std::size_t node) const { return end_[node]; }

private:
    void build(std::size_t node, std::int64_t a, std::int64_t b);

    std::int64_t n_ = 0, tile_ = 1, tiles_ = 0;
    std::vector<std::int64_t> lo_, end_, leaf_lo_, leaf_end_, run_;
};

// A run of consecutive tiles of one class.
struct TileRun {
    std::int64_t first = 0, count = 0;
    BlockClass cls = BlockClass::empty;
};

// Appends the non-EMPTY tiles of `tree` in [t0, t1) (t1 < 0: every tile) against the other side's
// hull [lo, end), in tile order: a FULL range as one run (joined to a FULL run it touches), each
// PARTIAL tile as a run of one. tree_holds_queries: the tree's rows are the queries (else the keys).
void collect_tiles(const Pattern& pat, const HullTree& tree, bool tree_holds_queries, std::int64_t lo, std::int64_t end,
                   std::vector<TileRun>& out, std::int64_t t0 = 0, std::int64_t t1 = -1);

// A group of query rows of a pattern whose rows are key intervals (Pattern::rows_are_intervals):
// row r allows exactly the key positions [a[r], z[r]). The tiles' classes then come from the rows
// themselves rather than the group's hull, which is exact where the hull is not (a causal diagonal
// seen from a tall group).
class RowIntervals {
public:
    // Fills a and z (n entries each) for the rows at positions q_pos.
    RowIntervals(const Pattern& pat, const std::int64_t* q_pos, std::int64_t n, std::int64_t* a, std::int64_t* z);
    const std::int64_t* a() const { return a_; }
    const std::int64_t* z() const { return z_; }
    BlockClass classify(std::int64_t k_lo, std::int64_t k_end) const;
    // As collect_tiles over a key tree, one run per tile, FULL and PARTIAL alike.
    void collect(const HullTree& keys, std::vector<TileRun>& out) const;

private:
    void collect(const HullTree& keys, std::size_t node, std::int64_t t0, std::int64_t t1, std::vector<TileRun>& out) const;

    const std::int64_t* a_;
    const std::int64_t* z_;
    std::int64_t n_;
    std::int64_t lo_, end_;    // union hull of the non-empty intervals (lo_ >= end_: none)
    std::int64_t amax_, zmin_;  // every row allows [amax_, zmin_) (when amax_ < zmin_)
};

// Positions as runs of consecutive values [lo, end); more than max_runs runs collapse into one hull,
// which keeps every answer below conservative (EMPTY is never claimed wrongly).
using PositionRuns = std::vector<std::pair<std::int64_t, std::int64_t>>;
PositionRuns position_runs(const std::int64_t* pos, std::int64_t n, std::size_t max_runs = 8);

// Some query of q_runs may attend some key of k_runs (exact up to the runs' hulls).
bool may_attend(const Pattern& pat, const PositionRuns& q_runs, const PositionRuns& k_runs);

}  // namespace longattn
