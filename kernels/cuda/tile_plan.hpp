#pragma once
// The tiles a CUDA kernel visits, planned on the host from the Pattern and the global positions.
//
// Query rows are cut into tiles of `rows` rows, keys into tiles of kKeyTile = 64 keys (the bits of one
// mask word). For every query tile the plan lists its non-EMPTY key tiles in key order, as segments: a
// run of FULL tiles is one segment (visited without any mask), a PARTIAL tile is a segment of one that
// names its block of `rows` mask words (word r, bit j: tile row r may attend tile key j; 0 for rows past
// the end of the query). A tile whose position hulls classify PARTIAL but whose exact mask allows every
// pair, or none, is planned as FULL, or dropped. Read by key tile (query tiles in order, the same mask
// words) the plan drives the backward's dK/dV kernel.
//
// Worked example: causal, positions 0..199 for queries and keys, rows = 64 (key tiles 0..3, the last
// holding keys 192..199):
//   query tile 0 (rows 0..63):    {first 0, count 1, PARTIAL}
//   query tile 1 (rows 64..127):  {first 0, count 1, FULL}, {first 1, count 1, PARTIAL}
//   query tile 3 (rows 192..199): {first 0, count 3, FULL}, {first 3, count 1, PARTIAL}
//   key tile 0 by key:            {first 0, count 1, PARTIAL}, {first 1, count 3, FULL}
//
// Cost per call: O(query tiles x (segments + log key tiles)) Pattern::classify calls on position hulls
// (a segment tree of key tile hulls, as the CPU kernels use), the same again by key tile, and one mask
// row per row of a PARTIAL tile (two bounds for causal/document/window patterns over consecutive
// keys, else 64 pattern checks). It uploads 16 bytes per segment and 8 bytes per row of a PARTIAL tile:
// for a causal 128K x 128K call with 64-row tiles, about 2K PARTIAL tiles (1 MiB of masks) and 4K
// segments each way.
#include <cstdint>
#include <vector>

#include "longattn/pattern.hpp"

namespace longattn::kernels::cuda {

inline constexpr std::int64_t kKeyTile = 64;

// Read by the kernels as is: 16 bytes.
struct Segment {
    std::int32_t first = 0;  // first tile of the run (a key tile by query, a query tile by key)
    std::int32_t count = 0;  // tiles in the run
    std::int32_t mask = -1;  // PARTIAL: index of its block of mask words; -1: FULL
    std::int32_t reserved = 0;
};

struct TileIndex {
    std::vector<std::int32_t> seg_ptr;  // tiles + 1 offsets into segs
    std::vector<Segment> segs;
    std::vector<std::int32_t> order;    // tiles by visited tiles, most first (ties by index): long CTAs start first
};

struct TilePlan {
    std::int64_t rows = 0;                  // query rows per tile
    std::int64_t q_tiles = 0, k_tiles = 0;
    TileIndex by_query;
    TileIndex by_key;                       // filled when asked for
    std::vector<std::uint64_t> masks;       // `rows` words per PARTIAL tile
    std::int64_t full_tiles = 0, partial_tiles = 0;
};

// Positions are host arrays of sq and sk entries; rows is the query tile height.
TilePlan plan_tiles(const Pattern& pattern, const std::int64_t* q_pos, std::int64_t sq, const std::int64_t* k_pos,
                    std::int64_t sk, std::int64_t rows, bool by_key);

}  // namespace longattn::kernels::cuda
