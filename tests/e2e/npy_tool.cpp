// Test helper for the bench's file I/O:
//   npy_tool make DIR S H HKV D SEED fp32|fp16   q.npy, k.npy, v.npy, dout.npy [S, H(KV), D] holding the
//                                                 bench's synthetic inputs of that seed
//   npy_tool diff A B TOL                         exit 1 unless same shape and max |a - b| <= TOL
//   npy_tool poke FILE INDEX VALUE                element INDEX of a float32 FILE becomes VALUE (nan, inf...)
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/npy.hpp"
#include "longattn/synth.hpp"

using namespace longattn;
using namespace longattn::bench;

namespace {

void make(const std::string& name, SynthTensor t, std::int64_t S, std::int64_t H, std::int64_t D, std::uint64_t seed,
          DType dtype) {
    NpyWriter w(name, {S, H, D}, dtype);
    w.create();
    std::vector<float> row(static_cast<std::size_t>(H * D));
    for (std::int64_t s = 0; s < S; ++s) {
        for (std::int64_t h = 0; h < H; ++h)
            for (std::int64_t d = 0; d < D; ++d) row[static_cast<std::size_t>(h * D + d)] = synth_value(seed, t, 0, s, h, d);
        w.write(s * H * D, H * D, row.data());
    }
    w.finish();
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const std::string cmd = argc > 1 ? argv[1] : "";
        if (cmd == "make" && argc == 9) {
            const std::string dir = argv[2];
            const std::int64_t S = std::stoll(argv[3]), H = std::stoll(argv[4]), Hkv = std::stoll(argv[5]),
                               D = std::stoll(argv[6]);
            const std::uint64_t seed = std::stoull(argv[7]);
            const DType t = std::string(argv[8]) == "fp16" ? DType::f16 : DType::f32;
            make(dir + "/q.npy", SynthTensor::q, S, H, D, seed, t);
            make(dir + "/k.npy", SynthTensor::k, S, Hkv, D, seed, t);
            make(dir + "/v.npy", SynthTensor::v, S, Hkv, D, seed, t);
            make(dir + "/dout.npy", SynthTensor::dout, S, H, D, seed, t);
            return 0;
        }
        if (cmd == "diff" && argc == 5) {
            NpyReader a(argv[2], "a"), b(argv[3], "b");
            if (a.header().shape != b.header().shape) {
                std::printf("shapes differ\n");
                return 1;
            }
            const std::int64_t n = a.header().numel();
            std::vector<float> x(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(n));
            a.read(0, n, x.data());
            b.read(0, n, y.data());
            double worst = 0;
            for (std::int64_t i = 0; i < n; ++i) {
                const float u = x[static_cast<std::size_t>(i)], v = y[static_cast<std::size_t>(i)];
                const double e = u == v ? 0.0 : std::isnan(u) || std::isnan(v) ? INFINITY : std::fabs(double(u) - double(v));
                worst = std::max(worst, e);
            }
            const double tol = std::stod(argv[4]);
            std::printf("%s vs %s: %lld values, max |a - b| = %.3e (tolerance %.3e)\n", argv[2], argv[3],
                        static_cast<long long>(n), worst, tol);
            return worst <= tol ? 0 : 1;
        }
        if (cmd == "poke" && argc == 5) {
            const NpyHeader h = npy_read_header(argv[2], "poke");
            const float x = std::strtof(argv[4], nullptr);
            const int fd = ::open(argv[2], O_WRONLY);
            const bool ok = fd >= 0 && h.dtype == DType::f32 &&
                            ::pwrite(fd, &x, 4, static_cast<off_t>(h.data_offset + 4 * std::stoull(argv[3]))) == 4;
            if (fd >= 0) ::close(fd);
            return ok ? 0 : 1;
        }
        std::fprintf(stderr, "usage: npy_tool make DIR S H HKV D SEED fp32|fp16 | diff A B TOL | poke FILE INDEX VALUE\n");
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "npy_tool: %s\n", e.what());
        return 1;
    }
}
