#include "kernels/cuda/tile_plan.hpp"

#include <algorithm>
#include <cstddef>
#include <numeric>

#include "longattn/block_plan.hpp"

namespace longattn::kernels::cuda {
namespace {

// Appends a run of FULL tiles to the segments of one tile, out[begin, end), joining it to the previous
// run when they touch.
void append_full(std::vector<Segment>& out, std::size_t begin, std::int64_t first, std::int64_t count) {
    if (out.size() > begin && out.back().mask == -1 && out.back().first + out.back().count == first) {
        out.back().count += static_cast<std::int32_t>(count);
        return;
    }
    out.push_back({static_cast<std::int32_t>(first), static_cast<std::int32_t>(count), -1, 0});
}

std::uint64_t bits(std::int64_t a, std::int64_t z) {  // bits [a, z) of a word, 0 <= a <= z <= 64
    if (z <= a) return 0;
    const std::uint64_t ones = z - a == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << (z - a)) - 1;
    return ones << a;
}

enum class Verdict { empty, partial, full };

struct Planner {
    const Pattern& pat;
    const std::int64_t* q_pos;
    const std::int64_t* k_pos;
    std::int64_t sq, sk, rows;
    const HullTree& keys;
    std::vector<std::uint8_t> row_mask;

    // The exact mask words of tile (qt, kt) into out[0, rows).
    Verdict mask_tile(std::int64_t qt, std::int64_t kt, std::uint64_t* out) {
        const std::int64_t i0 = qt * rows, nq = std::min(rows, sq - i0);
        const std::int64_t j0 = kt * kKeyTile, nk = std::min(kKeyTile, sk - j0);
        const std::int64_t base = keys.run_start(kt);
        const bool by_bounds = pat.rows_are_intervals() && base != kScattered;
        const std::uint64_t all = bits(0, nk);
        bool any = false, every = true;
        for (std::int64_t r = 0; r < rows; ++r) {
            std::uint64_t w = 0;
            if (r < nq) {
                const std::int64_t q = q_pos[i0 + r];
                if (by_bounds) {
                    std::int64_t a = 0, z = 0;
                    pat.row_interval(q, a, z);
                    a = std::clamp<std::int64_t>(a - base, 0, nk);
                    z = std::clamp<std::int64_t>(z - base, a, nk);
                    w = bits(a, z);
                } else {
                    pat.mask_row(q, k_pos + j0, nk, row_mask.data());
                    for (std::int64_t j = 0; j < nk; ++j) w |= static_cast<std::uint64_t>(row_mask[static_cast<std::size_t>(j)] != 0) << j;
                }
                any = any || w != 0;
                every = every && w == all;
            }
            out[r] = w;
        }
        return !any ? Verdict::empty : every ? Verdict::full : Verdict::partial;
    }
};

std::vector<std::int32_t> heaviest_first(const TileIndex& idx, std::int64_t tiles) {
    std::vector<std::int64_t> work(static_cast<std::size_t>(tiles), 0);
    for (std::int64_t t = 0; t < tiles; ++t)
        for (std::int32_t s = idx.seg_ptr[static_cast<std::size_t>(t)]; s < idx.seg_ptr[static_cast<std::size_t>(t) + 1]; ++s)
            work[static_cast<std::size_t>(t)] += idx.segs[static_cast<std::size_t>(s)].count;
    std::vector<std::int32_t> order(static_cast<std::size_t>(tiles));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
        return work[static_cast<std::size_t>(a)] > work[static_cast<std::size_t>(b)];
    });
    return order;
}

}  // namespace

TilePlan plan_tiles(const Pattern& pattern, const std::int64_t* q_pos, std::int64_t sq, const std::int64_t* k_pos,
                    std::int64_t sk, std::int64_t rows, bool by_key) {
    TilePlan plan;
    plan.rows = rows;
    plan.q_tiles = (sq + rows - 1) / rows;
    plan.k_tiles = (sk + kKeyTile - 1) / kKeyTile;

    const HullTree ktree(k_pos, sk, kKeyTile);
    const HullTree qtree(q_pos, sq, rows);
    Planner pl{pattern, q_pos, k_pos, sq, sk, rows, ktree, std::vector<std::uint8_t>(kKeyTile)};
    std::vector<std::uint64_t> words(static_cast<std::size_t>(rows));

    TileIndex& bq = plan.by_query;
    bq.seg_ptr.assign(static_cast<std::size_t>(plan.q_tiles + 1), 0);
    std::vector<TileRun> found;
    for (std::int64_t qt = 0; qt < plan.q_tiles; ++qt) {
        found.clear();
        collect_tiles(pattern, ktree, false, qtree.tile_lo(qt), qtree.tile_end(qt), found);
        const std::size_t begin = bq.segs.size();
        for (const TileRun& s : found) {
            if (s.cls == BlockClass::full) {
                append_full(bq.segs, begin, s.first, s.count);
                plan.full_tiles += s.count;
                continue;
            }
            switch (pl.mask_tile(qt, s.first, words.data())) {
                case Verdict::empty: break;
                case Verdict::full:
                    append_full(bq.segs, begin, s.first, 1);
                    ++plan.full_tiles;
                    break;
                case Verdict::partial:
                    bq.segs.push_back({static_cast<std::int32_t>(s.first), 1, static_cast<std::int32_t>(plan.partial_tiles), 0});
                    plan.masks.insert(plan.masks.end(), words.begin(), words.end());
                    ++plan.partial_tiles;
                    break;
            }
        }
        bq.seg_ptr[static_cast<std::size_t>(qt + 1)] = static_cast<std::int32_t>(bq.segs.size());
    }
    bq.order = heaviest_first(bq, plan.q_tiles);
    if (!by_key) return plan;

    // By key tile: the same verdicts (classification of a tile is that of its own hulls whichever side
    // the ranges grew on), and the PARTIAL tiles' verdicts and masks looked up in the by-query plan.
    TileIndex& bk = plan.by_key;
    bk.seg_ptr.assign(static_cast<std::size_t>(plan.k_tiles + 1), 0);
    for (std::int64_t kt = 0; kt < plan.k_tiles; ++kt) {
        found.clear();
        collect_tiles(pattern, qtree, true, ktree.tile_lo(kt), ktree.tile_end(kt), found);
        const std::size_t begin = bk.segs.size();
        for (const TileRun& s : found) {
            if (s.cls == BlockClass::full) {
                append_full(bk.segs, begin, s.first, s.count);
                continue;
            }
            const auto first = bq.segs.begin() + bq.seg_ptr[static_cast<std::size_t>(s.first)];
            const auto last = bq.segs.begin() + bq.seg_ptr[static_cast<std::size_t>(s.first) + 1];
            // The last segment starting at or before kt; it holds kt when its run reaches it.
            auto it = std::upper_bound(first, last, static_cast<std::int32_t>(kt),
                                       [](std::int32_t v, const Segment& seg) { return v < seg.first; });
            if (it == first) continue;
            --it;
            if (kt >= it->first + it->count) continue;  // dropped as EMPTY by the exact mask
            if (it->mask < 0)
                append_full(bk.segs, begin, s.first, 1);
            else
                bk.segs.push_back({static_cast<std::int32_t>(s.first), 1, it->mask, 0});
        }
        bk.seg_ptr[static_cast<std::size_t>(kt + 1)] = static_cast<std::int32_t>(bk.segs.size());
    }
    bk.order = heaviest_first(bk, plan.k_tiles);
    return plan;
}

}  // namespace longattn::kernels::cuda
