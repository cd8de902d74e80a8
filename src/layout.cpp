#include "longattn/layout.hpp"

#include "longattn/error.hpp"

namespace longattn {

LayoutKind parse_layout(const std::string& name) {
    if (name == "contiguous") return LayoutKind::contiguous;
    if (name == "zigzag") return LayoutKind::zigzag;
    if (name == "striped") return LayoutKind::striped;
    require(false, "layout", "must be contiguous, zigzag or striped, got '", name, "'");
    return LayoutKind::contiguous;
}

const char* layout_name(LayoutKind k) {
    return k == LayoutKind::contiguous ? "contiguous" : k == LayoutKind::zigzag ? "zigzag" : "striped";
}

Layout::Layout(LayoutKind kind, std::int64_t n, int p) : kind_(kind), n_(n), p_(p) {
    require(n >= 0, "layout.tokens", "must be >= 0, got ", n);
    require(p >= 1, "layout.ranks", "must be >= 1, got ", p);
}

std::int64_t Layout::part_start(std::int64_t c, std::int64_t parts) const {
    const std::int64_t base = n_ / parts, extra = n_ % parts;
    return c * base + std::min(c, extra);
}

std::int64_t Layout::local_count(int r) const {
    switch (kind_) {
        case LayoutKind::contiguous: return part_start(r + 1, p_) - part_start(r, p_);
        case LayoutKind::zigzag: {
            const std::int64_t c2 = 2 * p_ - 1 - r;
            return part_start(r + 1, 2 * p_) - part_start(r, 2 * p_) + part_start(c2 + 1, 2 * p_) -
                   part_start(c2, 2 * p_);
        }
        default: return r < n_ ? (n_ - r + p_ - 1) / p_ : 0;
    }
}

std::int64_t Layout::global(int r, std::int64_t local) const {
    switch (kind_) {
        case LayoutKind::contiguous: return part_start(r, p_) + local;
        case LayoutKind::zigzag: {
            const std::int64_t first = part_start(r + 1, 2 * p_) - part_start(r, 2 * p_);
            if (local < first) return part_start(r, 2 * p_) + local;
            return part_start(2 * p_ - 1 - r, 2 * p_) + (local - first);
        }
        default: return local * p_ + r;
    }
}

std::pair<int, std::int64_t> Layout::locate(std::int64_t g) const {
    auto part_of = [&](std::int64_t parts) {
        // Parts of size base+1 come first, then parts of size base.
        const std::int64_t base = n_ / parts, extra = n_ % parts;
        const std::int64_t big = extra * (base + 1);
        return g < big ? g / (base + 1) : extra + (g - big) / base;
    };
    switch (kind_) {
        case LayoutKind::contiguous: {
            const auto r = part_of(p_);
            return {static_cast<int>(r), g - part_start(r, p_)};
        }
        case LayoutKind::zigzag: {
            const std::int64_t c = part_of(2 * p_);
            if (c < p_) return {static_cast<int>(c), g - part_start(c, 2 * p_)};
            const int r = static_cast<int>(2 * p_ - 1 - c);
            return {r, part_start(r + 1, 2 * p_) - part_start(r, 2 * p_) + g - part_start(c, 2 * p_)};
        }
        default: return {static_cast<int>(g % p_), g / p_};
    }
}

std::vector<std::int64_t> Layout::positions(int r) const {
    std::vector<std::int64_t> out(static_cast<std::size_t>(local_count(r)));
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = global(r, static_cast<std::int64_t>(i));
    return out;
}

}  // namespace longattn
