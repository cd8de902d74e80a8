// Packed documents for long-document benchmarks: equal parts, given lengths (repeated), or lengths drawn
// from a distribution by a counter-based generator, so every rank lays out the same documents.
#include <algorithm>
#include <cmath>
#include <numbers>
#include <sstream>

#include "bench/bench.hpp"

namespace longattn::bench {
namespace {

std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Uniform in (0, 1) from (seed, document, draw).
double unit(std::uint64_t seed, std::uint64_t doc, std::uint64_t draw) {
    const std::uint64_t h = splitmix64(splitmix64(seed ^ 0x6c6f6e67ull) ^ splitmix64(doc * 4 + draw));
    return (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53;
}

std::int64_t drawn_length(const DocSpec& d, std::uint64_t doc) {
    double x = 0;
    switch (d.kind) {
        case DocSpec::Kind::uniform: x = d.a + std::floor(unit(d.seed, doc, 0) * (d.b - d.a + 1)); break;
        case DocSpec::Kind::exponential: x = -d.a * std::log(unit(d.seed, doc, 0)); break;
        default: {
            // Lognormal with the given mean: mu = ln(mean) - sigma^2 / 2.
            const double z = std::sqrt(-2.0 * std::log(unit(d.seed, doc, 0))) *
                             std::cos(2.0 * std::numbers::pi * unit(d.seed, doc, 1));
            x = std::exp(std::log(d.a) - d.b * d.b / 2 + d.b * z);
            break;
        }
    }
    return std::max<std::int64_t>(1, static_cast<std::int64_t>(std::llround(std::min(x, 1e15))));
}

}  // namespace

std::vector<std::int64_t> doc_bounds(const DocSpec& d, std::int64_t n) {
    if (d.kind == DocSpec::Kind::none || n <= 0) return {};
    std::vector<std::int64_t> b = {0};
    if (d.kind == DocSpec::Kind::equal) {
        const std::int64_t count = std::min(d.count, n);
        for (std::int64_t i = 1; i <= count; ++i) b.push_back(i * n / count);
        return b;
    }
    for (std::uint64_t i = 0; b.back() < n; ++i) {
        const std::int64_t len =
            d.kind == DocSpec::Kind::lens ? d.lens[static_cast<std::size_t>(i % d.lens.size())] : drawn_length(d, i);
        b.push_back(std::min(n, b.back() + len));
    }
    return b;
}

std::string DocSpec::describe() const {
    std::ostringstream os;
    switch (kind) {
        case Kind::none: return "none";
        case Kind::equal: os << count << " equal"; break;
        case Kind::lens:
            os << "lengths";
            for (std::size_t i = 0; i < lens.size() && i < 8; ++i) os << (i ? "," : " ") << lens[i];
            if (lens.size() > 8) os << ",...";
            break;
        case Kind::uniform: os << "uniform(" << a << "," << b << ") seed " << seed; break;
        case Kind::exponential: os << "exp(mean " << a << ") seed " << seed; break;
        case Kind::lognormal: os << "lognormal(mean " << a << ", sigma " << b << ") seed " << seed; break;
    }
    return os.str();
}

}  // namespace longattn::bench
