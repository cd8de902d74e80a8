#include "longattn/pattern.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "longattn/error.hpp"

namespace longattn {
namespace {

std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// r distinct values of [0, n), sorted; Floyd's sampling keyed by (seed, row) so every rank that
// builds the same PatternSpec draws the same blocks.
std::vector<std::int64_t> sample_blocks(std::uint64_t seed, std::int64_t row, std::int64_t r, std::int64_t n) {
    std::vector<std::int64_t> out;
    if (r >= n) {
        for (std::int64_t i = 0; i < n; ++i) out.push_back(i);
        return out;
    }
    const std::uint64_t key = splitmix64(seed ^ splitmix64(static_cast<std::uint64_t>(row)));
    for (std::int64_t j = n - r; j < n; ++j) {
        const auto t = static_cast<std::int64_t>(splitmix64(key + static_cast<std::uint64_t>(j)) %
                                                 static_cast<std::uint64_t>(j + 1));
        out.push_back(std::find(out.begin(), out.end(), t) == out.end() ? t : j);
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::int64_t overlap(std::int64_t a0, std::int64_t a1, std::int64_t b0, std::int64_t b1) {
    return std::max<std::int64_t>(0, std::min(a1, b1) - std::max(a0, b0));
}

}  // namespace

Pattern::Pattern() = default;

Pattern::Pattern(PatternSpec spec) : spec_(std::move(spec)) {
    const PatternSpec& s = spec_;
    if (!s.doc_bounds.empty()) {
        require(s.doc_bounds.size() >= 2, "pattern.doc_bounds", "needs at least two entries (0 and the end), got ",
                s.doc_bounds.size());
        require(s.doc_bounds[0] == 0, "pattern.doc_bounds", "must start at 0, got ", s.doc_bounds[0]);
        for (std::size_t i = 1; i < s.doc_bounds.size(); ++i)
            require(s.doc_bounds[i] > s.doc_bounds[i - 1], "pattern.doc_bounds",
                    "must be strictly increasing (every document has at least one token); entry ", i, " is ",
                    s.doc_bounds[i], " after ", s.doc_bounds[i - 1]);
    }
    if (s.window) {
        require(s.window->left >= -1, "pattern.window.left", "must be >= 0 or -1 (unbounded), got ", s.window->left);
        require(s.window->right >= -1, "pattern.window.right", "must be >= 0 or -1 (unbounded), got ",
                s.window->right);
    }
    require(s.global_first >= 0, "pattern.global_first", "must be >= 0, got ", s.global_first);
    for (auto g : s.global_list) require(g >= 0, "pattern.global_list", "positions must be >= 0, got ", g);
    require(s.block > 0, "pattern.block", "must be > 0, got ", s.block);
    require(s.block_mask_rows >= 0 && s.block_mask_cols >= 0, "pattern.block_mask",
            "rows and cols must be >= 0");
    require(static_cast<std::int64_t>(s.block_mask.size()) == s.block_mask_rows * s.block_mask_cols,
            "pattern.block_mask", "has ", s.block_mask.size(), " entries, expected rows*cols = ",
            s.block_mask_rows * s.block_mask_cols);
    require(s.stride >= 0, "pattern.stride", "must be >= 0 (0 = off), got ", s.stride);
    require(s.random_blocks >= 0, "pattern.random_blocks", "must be >= 0, got ", s.random_blocks);
    require(s.random_blocks == 0 || s.seq_len > 0, "pattern.seq_len",
            "must be > 0 when pattern.random_blocks is set (it bounds the key blocks drawn)");
    require(std::isfinite(s.softcap) && s.softcap >= 0.0f, "pattern.softcap", "must be >= 0 (0 = off), got ",
            s.softcap);
    require(std::isfinite(s.scale) && s.scale >= 0.0f, "pattern.scale", "must be > 0, or 0 for 1/sqrt(D), got ",
            s.scale);
    for (float a : s.alibi_slopes) require(std::isfinite(a), "pattern.alibi_slopes", "must be finite, got ", a);

    for (auto g : s.global_list)
        if (g >= s.global_first) globals_.push_back(g);
    std::sort(globals_.begin(), globals_.end());
    globals_.erase(std::unique(globals_.begin(), globals_.end()), globals_.end());

    if (s.random_blocks > 0) {
        const std::int64_t nb = (s.seq_len + s.block - 1) / s.block;
        random_rows_.resize(static_cast<std::size_t>(nb));
        for (std::int64_t qb = 0; qb < nb; ++qb)
            random_rows_[static_cast<std::size_t>(qb)] =
                sample_blocks(s.random_seed, qb, s.random_blocks, s.causal ? std::min(qb + 1, nb) : nb);
    }
    has_sparse_ = s.window.has_value() || s.global_first > 0 || !globals_.empty() || !s.block_mask.empty() ||
                  s.stride > 0 || s.random_blocks > 0;
    intervals_ = s.global_first == 0 && globals_.empty() && s.block_mask.empty() && s.stride == 0 && s.random_blocks == 0;
}

float Pattern::softmax_scale(std::int64_t head_dim) const {
    return spec_.scale > 0.0f ? spec_.scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
}

std::int64_t Pattern::doc_of(std::int64_t p) const {
    const auto& b = spec_.doc_bounds;
    if (b.empty()) return 0;
    return (std::upper_bound(b.begin(), b.end(), p) - b.begin()) - 1;
}

bool Pattern::is_global(std::int64_t p) const {
    return p < spec_.global_first || std::binary_search(globals_.begin(), globals_.end(), p);
}

bool Pattern::block_allowed(std::int64_t qb, std::int64_t kb) const {
    const PatternSpec& s = spec_;
    if (qb < s.block_mask_rows && kb < s.block_mask_cols && s.block_mask[qb * s.block_mask_cols + kb]) return true;
    if (s.stride > 0 && kb % s.stride == s.stride - 1) return true;
    if (qb < static_cast<std::int64_t>(random_rows_.size())) {
        const auto& row = random_rows_[static_cast<std::size_t>(qb)];
        if (std::binary_search(row.begin(), row.end(), kb)) return true;
    }
    return false;
}

bool Pattern::allowed(std::int64_t q, std::int64_t k) const {
    if (!spec_.doc_bounds.empty() && doc_of(q) != doc_of(k)) return false;
    if (spec_.causal && k > q) return false;
    if (!has_sparse_) return true;
    if (spec_.window) {
        const Window& w = *spec_.window;
        if ((w.left < 0 || k >= q - w.left) && (w.right < 0 || k <= q + w.right)) return true;
    }
    if (is_global(q) || is_global(k)) return true;
    return block_allowed(q / spec_.block, k / spec_.block);
}

void Pattern::gate_interval(std::int64_t q, std::int64_t k_lo, std::int64_t k_hi, std::int64_t& a,
                            std::int64_t& b) const {
    a = k_lo;
    b = k_hi;
    const auto& bounds = spec_.doc_bounds;
    if (!bounds.empty()) {
        const std::int64_t d = doc_of(q);
        if (d >= 0) a = std::max(a, bounds[static_cast<std::size_t>(d)]);
        if (d + 1 < static_cast<std::int64_t>(bounds.size())) b = std::min(b, bounds[static_cast<std::size_t>(d + 1)]);
    }
    if (spec_.causal) b = std::min(b, q + 1);
    if (b < a) b = a;
}

std::int64_t Pattern::count_line(std::int64_t a, std::int64_t b, std::int64_t wa, std::int64_t wb,
                                 std::int64_t fixed_block, bool row) const {
    // Global positions in [x, y).
    auto globals_in = [&](std::int64_t x, std::int64_t y) {
        if (y <= x) return std::int64_t{0};
        return overlap(0, spec_.global_first, x, y) +
               (std::lower_bound(globals_.begin(), globals_.end(), y) -
                std::lower_bound(globals_.begin(), globals_.end(), x));
    };
    // Positions of [x, y) reached by the window or a global position.
    auto base = [&](std::int64_t x, std::int64_t y) {
        const std::int64_t ox0 = std::max(x, wa), ox1 = std::min(y, wb);
        const std::int64_t in_w = std::max<std::int64_t>(0, ox1 - ox0);
        return in_w + globals_in(x, y) - (in_w > 0 ? globals_in(ox0, ox1) : 0);
    };
    std::int64_t n = base(a, b);
    const bool block_parts = !spec_.block_mask.empty() || spec_.stride > 0 || spec_.random_blocks > 0;
    if (!block_parts) return n;
    // Whole allowed blocks: add what the window and globals did not already count.
    const std::int64_t blk = spec_.block;
    for (std::int64_t ob = a / blk; ob * blk < b; ++ob) {
        if (!(row ? block_allowed(fixed_block, ob) : block_allowed(ob, fixed_block))) continue;
        const std::int64_t x = std::max(a, ob * blk), y = std::min(b, (ob + 1) * blk);
        n += (y - x) - base(x, y);
    }
    return n;
}

std::int64_t Pattern::count_row(std::int64_t q, std::int64_t k_lo, std::int64_t k_hi) const {
    std::int64_t a, b;
    gate_interval(q, k_lo, k_hi, a, b);
    if (a >= b) return 0;
    if (!has_sparse_ || is_global(q)) return b - a;
    // The window's keys for q: [q - left, q + right] (possibly empty, possibly unbounded).
    std::int64_t wa = a, wb = a;
    if (spec_.window) {
        const Window& w = *spec_.window;
        wa = w.left < 0 ? a : std::max(a, q - w.left);
        wb = w.right < 0 ? b : std::min(b, q + w.right + 1);
        if (wb < wa) wb = wa;
    }
    return count_line(a, b, wa, wb, q / spec_.block, true);
}

// The mirror of count_row: queries of [q_lo, q_hi) allowed to attend key k. allowed(q, k)'s sparse
// part is symmetric in form (window, either position global, block pair), with the window's query
// interval for key k being [k - right, k + left].
std::int64_t Pattern::count_col(std::int64_t k, std::int64_t q_lo, std::int64_t q_hi) const {
    std::int64_t a = q_lo, b = q_hi;
    const auto& bounds = spec_.doc_bounds;
    if (!bounds.empty()) {
        const std::int64_t d = doc_of(k);
        if (d >= 0) a = std::max(a, bounds[static_cast<std::size_t>(d)]);
        if (d + 1 < static_cast<std::int64_t>(bounds.size())) b = std::min(b, bounds[static_cast<std::size_t>(d + 1)]);
    }
    if (spec_.causal) a = std::max(a, k);
    if (a >= b) return 0;
    if (!has_sparse_ || is_global(k)) return b - a;
    std::int64_t wa = a, wb = a;
    if (spec_.window) {
        const Window& w = *spec_.window;
        wa = w.right < 0 ? a : std::max(a, k - w.right);
        wb = w.left < 0 ? b : std::min(b, k + w.left + 1);
        if (wb < wa) wb = wa;
    }
    return count_line(a, b, wa, wb, k / spec_.block, false);
}

std::int64_t Pattern::count_allowed(std::int64_t q_lo, std::int64_t q_hi, std::int64_t k_lo, std::int64_t k_hi) const {
    std::int64_t n = 0;
    if (k_hi <= k_lo || q_hi <= q_lo) return 0;
    // Count along the shorter side: a key block against a long query range costs its width.
    if (k_hi - k_lo < q_hi - q_lo) {
        for (std::int64_t k = k_lo; k < k_hi; ++k) n += count_col(k, q_lo, q_hi);
        return n;
    }
    for (std::int64_t q = q_lo; q < q_hi; ++q) n += count_row(q, k_lo, k_hi);
    return n;
}

BlockClass Pattern::classify(std::int64_t q_lo, std::int64_t q_hi, std::int64_t k_lo, std::int64_t k_hi) const {
    if (q_hi <= q_lo || k_hi <= k_lo) return BlockClass::empty;
    // Cheap verdicts from the gates before counting.
    if (spec_.causal && k_lo > q_hi - 1) return BlockClass::empty;
    const bool docs = !spec_.doc_bounds.empty();
    if (docs && (doc_of(q_hi - 1) < doc_of(k_lo) || doc_of(q_lo) > doc_of(k_hi - 1))) return BlockClass::empty;
    if (!has_sparse_) {
        const bool one_doc = !docs || (doc_of(q_lo) == doc_of(k_hi - 1) && doc_of(k_lo) == doc_of(q_hi - 1));
        const bool past = !spec_.causal || k_hi - 1 <= q_lo;
        if (one_doc && past) return BlockClass::full;
    }
    const std::int64_t n = count_allowed(q_lo, q_hi, k_lo, k_hi);
    if (n == 0) return BlockClass::empty;
    return n == (q_hi - q_lo) * (k_hi - k_lo) ? BlockClass::full : BlockClass::partial;
}

BlockClass Pattern::classify_positions(const std::int64_t* q_pos, std::int64_t nq, const std::int64_t* k_pos,
                                       std::int64_t nk) const {
    if (nq <= 0 || nk <= 0) return BlockClass::empty;
    const auto [qmin, qmax] = std::minmax_element(q_pos, q_pos + nq);
    const auto [kmin, kmax] = std::minmax_element(k_pos, k_pos + nk);
    return classify(*qmin, *qmax + 1, *kmin, *kmax + 1);
}

void Pattern::row_interval(std::int64_t q, std::int64_t& lo, std::int64_t& hi) const {
    gate_interval(q, INT64_MIN / 4, INT64_MAX / 4, lo, hi);
    if (spec_.window) {
        const Window& w = *spec_.window;
        if (w.left >= 0) lo = std::max(lo, q - w.left);
        if (w.right >= 0) hi = std::min(hi, q + w.right + 1);
        if (hi < lo) hi = lo;
    }
}

void Pattern::mask_row(std::int64_t q, const std::int64_t* k_pos, std::int64_t n, std::uint8_t* out) const {
    // The gates are an interval of keys; the sparse parts are checked only for keys inside it.
    std::int64_t a, b;
    gate_interval(q, INT64_MIN / 4, INT64_MAX / 4, a, b);
    if (!has_sparse_ || is_global(q)) {
        for (std::int64_t j = 0; j < n; ++j) out[j] = k_pos[j] >= a && k_pos[j] < b;
        return;
    }
    std::int64_t wa = 0, wb = 0;
    if (spec_.window) {
        const Window& w = *spec_.window;
        wa = w.left < 0 ? INT64_MIN / 4 : q - w.left;
        wb = w.right < 0 ? INT64_MAX / 4 : q + w.right + 1;
    }
    const bool block_parts = !spec_.block_mask.empty() || spec_.stride > 0 || spec_.random_blocks > 0;
    const std::int64_t qb = q / spec_.block;
    for (std::int64_t j = 0; j < n; ++j) {
        const std::int64_t k = k_pos[j];
        bool ok = k >= a && k < b;
        if (ok) ok = (k >= wa && k < wb) || is_global(k) || (block_parts && block_allowed(qb, k / spec_.block));
        out[j] = ok;
    }
}

std::string Pattern::describe() const {
    const PatternSpec& s = spec_;
    std::ostringstream os;
    const char* sep = "";
    auto part = [&](const auto&... x) {
        os << sep;
        (os << ... << x);
        sep = "+";
    };
    if (s.causal) part("causal");
    if (!s.doc_bounds.empty()) part("docs(", s.doc_bounds.size() - 1, ")");
    if (s.window) part("window(", s.window->left, ",", s.window->right, ")");
    if (s.global_first > 0 || !globals_.empty()) part("global(", s.global_first + static_cast<std::int64_t>(globals_.size()), ")");
    if (!s.block_mask.empty()) part("block_mask(", s.block_mask_rows, "x", s.block_mask_cols, "@", s.block, ")");
    if (s.stride > 0) part("strided(", s.stride, "@", s.block, ")");
    if (s.random_blocks > 0) part("random(", s.random_blocks, "@", s.block, ",seed=", s.random_seed, ")");
    if (!s.alibi_slopes.empty()) part("alibi");
    if (s.softcap > 0) part("softcap(", s.softcap, ")");
    if (*sep == '\0') part("dense");
    return os.str();
}

}  // namespace longattn
