#pragma once
// The attention pattern: which (query, key) pairs of global token positions may attend.
//
//   allowed(q, k) = same_document(q, k) AND causal_ok(q, k) AND
//                   (no sparse part given OR window OR global OR block-sparse OR strided OR random)
//
// Worked example: causal + window {left=2, right=0} + global_first=1 over 6 tokens:
//   q=4 may see k in {0 (global), 2, 3, 4 (window)}; k=5 is in the future, k=1 is outside the window.
//
// The block classifier is exact: EMPTY iff no pair in the rectangle is allowed, FULL iff every pair
// is, PARTIAL otherwise. Kernels skip EMPTY blocks and skip masking on FULL ones.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace longattn {

enum class BlockClass : std::uint8_t { empty, partial, full };

struct Window {
    std::int64_t left = -1;   // keys k >= q - left; -1 unbounded
    std::int64_t right = -1;  // keys k <= q + right; -1 unbounded
};

// A plain description; every field has a meaning on its own. Pattern validates it.
struct PatternSpec {
    bool causal = false;                       // k <= q
    std::vector<std::int64_t> doc_bounds;      // cu_seqlens: 0 = b0 < b1 < ... ; empty: one document
    // Sparse parts (OR-ed together; if none is given every pair passing the gates above is allowed).
    std::optional<Window> window;
    std::int64_t global_first = 0;             // positions [0, global_first) are global
    std::vector<std::int64_t> global_list;     // further global positions (any order, deduplicated)
    std::int64_t block = 64;                   // block size of block-sparse, strided and random parts
    std::vector<std::uint8_t> block_mask;      // [block_mask_rows x block_mask_cols], 1 = allowed
    std::int64_t block_mask_rows = 0, block_mask_cols = 0;
    std::int64_t stride = 0;                   // > 0: key blocks kb with kb % stride == stride-1 allowed
    std::int64_t random_blocks = 0;            // r random key blocks per query block row
    std::uint64_t random_seed = 0;
    std::int64_t seq_len = 0;                  // total keys; needed by the random part
    // Score modifiers: s = scale * q.k; s = softcap * tanh(s / softcap) if softcap > 0;
    // s -= alibi_slopes[h] * |q - k| if slopes are given (one per query head).
    std::vector<float> alibi_slopes;
    float softcap = 0.0f;
    float scale = 0.0f;                        // 0: 1 / sqrt(head_dim)
};

class Pattern {
public:
    Pattern();  // dense, non-causal
    explicit Pattern(PatternSpec spec);  // throws longattn::Error naming the bad field

    const PatternSpec& spec() const { return spec_; }
    bool causal() const { return spec_.causal; }
    bool has_sparse_part() const { return has_sparse_; }
    bool has_alibi() const { return !spec_.alibi_slopes.empty(); }
    bool has_softcap() const { return spec_.softcap > 0.0f; }
    float softmax_scale(std::int64_t head_dim) const;
    float alibi_slope(std::int64_t head) const { return spec_.alibi_slopes[static_cast<std::size_t>(head)]; }

    bool allowed(std::int64_t q, std::int64_t k) const;
    // Exact count of allowed pairs in [q_lo, q_hi) x [k_lo, k_hi).
    std::int64_t count_allowed(std::int64_t q_lo, std::int64_t q_hi, std::int64_t k_lo, std::int64_t k_hi) const;
    BlockClass classify(std::int64_t q_lo, std::int64_t q_hi, std::int64_t k_lo, std::int64_t k_hi) const;
    // Classify arbitrary position sets through their hulls: EMPTY and FULL stay true for the subset.
    BlockClass classify_positions(const std::int64_t* q_pos, std::int64_t nq, const std::int64_t* k_pos,
                                  std::int64_t nk) const;
    // out[j] = allowed(q, k_pos[j]) as 0/1, fast enough for every row of a PARTIAL tile.
    void mask_row(std::int64_t q, const std::int64_t* k_pos, std::int64_t n, std::uint8_t* out) const;
    // True when every row's allowed keys form one interval of positions (causal, documents and a
    // window only): kernels then mask a PARTIAL tile of consecutive keys by two bounds per row.
    bool rows_are_intervals() const { return intervals_; }
    // With rows_are_intervals(): the allowed keys of row q are exactly the positions [lo, hi).
    void row_interval(std::int64_t q, std::int64_t& lo, std::int64_t& hi) const;

    // Document index of position p (0 with no documents).
    std::int64_t doc_of(std::int64_t p) const;
    std::string describe() const;

private:
    bool is_global(std::int64_t p) const;
    bool block_allowed(std::int64_t qb, std::int64_t kb) const;
    // Keys the gates (document, causal) leave to row q inside [k_lo, k_hi): [a, b), maybe empty.
    void gate_interval(std::int64_t q, std::int64_t k_lo, std::int64_t k_hi, std::int64_t& a, std::int64_t& b) const;
    std::int64_t count_row(std::int64_t q, std::int64_t k_lo, std::int64_t k_hi) const;
    std::int64_t count_col(std::int64_t k, std::int64_t q_lo, std::int64_t q_hi) const;
    // Positions of [a, b) on one row (keys) or column (queries) that the sparse parts allow, given the
    // fixed position's window interval [wa, wb) and block.
    std::int64_t count_line(std::int64_t a, std::int64_t b, std::int64_t wa, std::int64_t wb, std::int64_t fixed_block,
                            bool row) const;

    PatternSpec spec_;
    bool has_sparse_ = false;
    bool intervals_ = false;
    std::vector<std::int64_t> globals_;                    // sorted, excluding [0, global_first)
    std::vector<std::vector<std::int64_t>> random_rows_;   // sorted key blocks per query block
};

}  // namespace longattn
