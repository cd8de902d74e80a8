// libFuzzer target of the .npy reader: the input is the file. npy_read_header must accept it or throw
// longattn::Error; when it accepts a small array, NpyReader reads it whole and in the runs of rows the
// bench's loader reads ([S, H, D]: rows of H*D elements), and both reads must agree.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "bench/npy.hpp"
#include "fuzz_common.hpp"
#include "longattn/error.hpp"

namespace {

constexpr std::int64_t kMaxNumel = std::int64_t{1} << 16;

void read_all(const std::string& path) {
    const longattn::bench::NpyHeader h = longattn::bench::npy_read_header(path, "load");
    const std::int64_t n = h.numel();
    if (n < 0) std::abort();  // npy_read_header must refuse what it cannot size
    if (n >= kMaxNumel) return;
    longattn::bench::NpyReader r(path, "load");
    std::vector<float> whole(static_cast<std::size_t>(n)), rows(static_cast<std::size_t>(n));
    r.read(0, n, whole.data());
    if (n == 0) return;
    // Runs of rows: the last two extents of [S, H, D] (or the last one) make a row (every extent is
    // >= 1 here, so the product is at most n).
    const auto& s = r.header().shape;
    std::int64_t row = s.empty() ? 1 : s.back();
    if (s.size() >= 3) row *= s[s.size() - 2];
    for (std::int64_t first = 0; first < n;) {
        const std::int64_t run = std::min<std::int64_t>(n - first, first % (3 * row) == 0 ? 2 * row : row);
        r.read(first, run, rows.data() + first);
        first += run;
    }
    if (std::memcmp(whole.data(), rows.data(), static_cast<std::size_t>(n) * sizeof(float)) != 0) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string& path = longattn_fuzz::temp_file("fuzz_npy.npy");
    longattn_fuzz::write_file(path, data, size);
    try {
        read_all(path);
    } catch (const longattn::Error&) {
    }
    return 0;
}
