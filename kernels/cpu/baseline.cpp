// The benchmark's yardsticks, compiled once per instruction set as the flash kernels are: the FMA peak of
// the kernels' vectors and an unfused forward on the same vector building blocks.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "kernels/attention.hpp"
#include "kernels/cpu/simd.hpp"

LONGATTN_ISA_BEGIN
namespace longattn::kernels::cpu {
inline namespace LONGATTN_ISA {

// Independent FMA chains, enough to cover the latency of two FMA pipes and few enough to stay in
// registers (32 with AVX-512, 16 below).
__attribute__((noinline)) double fma_peak() {
    using Clock = std::chrono::steady_clock;
    constexpr int kChains = kLanes == 16 ? 16 : 10;
    vf acc[kChains];
    for (int i = 0; i < kChains; ++i) acc[i] = splat(1.0f + 1e-3f * static_cast<float>(i));
    const vf m = splat(0.999999f), a = splat(1e-7f);
    const long iters = 20'000'000;
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = Clock::now();
        for (long it = 0; it < iters; ++it)
            for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * m + a;  // one FMA (built with -ffp-contract=fast)
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        best = std::max(best, 2.0 * kLanes * kChains * static_cast<double>(iters) / s * 1e-9);
    }
    float sink = 0;
    for (int i = 0; i < kChains; ++i) sink += acc[i][0];
    if (sink == 42.0f) std::printf("#\n");  // keeps the chains alive
    return best;
}

// One row of log2-scale scores to probabilities, masked entries to 0; returns the row's LSE (natural
// log). Vector code stays out of the OpenMP region's body, which clang outlines without the target.
float softmax_row(float* row, std::int64_t L, const std::uint8_t* mask) {
    float mx = -INFINITY;
    for (std::int64_t j = 0; j < L; ++j) {
        if (!mask[j]) row[j] = -INFINITY;
        mx = std::max(mx, row[j]);
    }
    const float base = mx == -INFINITY ? 0.0f : mx;
    vf acc{};
    std::int64_t j = 0;
    for (; j + kLanes <= L; j += kLanes) {
        const vf e = exp2v(load(row + j) - base);
        store(row + j, e);
        acc += e;
    }
    float sum = hsum(acc);
    for (; j < L; ++j) sum += row[j] = std::exp2(row[j] - base);
    const float inv = sum > 0 ? 1.0f / sum : 0.0f;
    for (j = 0; j < L; ++j) row[j] *= inv;
    return sum > 0 ? (mx + std::log2(sum)) * 0.6931471805599453f : -INFINITY;
}

void unfused_forward(const FwdParams& p) {
    const std::int64_t B = p.q.shape[0], Lq = p.q.shape[1], H = p.q.shape[2], D = p.q.shape[3];
    const std::int64_t L = p.k.shape[1], G = H / p.k.shape[2];
    constexpr std::int64_t kPanel = 256;
    const float scale = p.pattern->softmax_scale(D) * 1.4426950408889634f;  // scores in the log2 scale
    auto at = [](const TensorView& t, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) {
        return load_as_f32(t.data, t.dtype, t.offset(b, s, h, d));
    };
    const int threads = p.threads > 0 ? p.threads : omp_get_max_threads();
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> kt(static_cast<std::size_t>(D * L)), vf32(static_cast<std::size_t>(L * D));
        std::vector<float> qp(static_cast<std::size_t>(kPanel * D)), s(static_cast<std::size_t>(kPanel * L));
        std::vector<float> op(static_cast<std::size_t>(kPanel * D));
        std::vector<std::uint8_t> mask(static_cast<std::size_t>(L));
#pragma omp for collapse(2) schedule(dynamic)
        for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t h = 0; h < H; ++h) {
                const std::int64_t hk = h / G;
                for (std::int64_t j = 0; j < L; ++j)
                    for (std::int64_t d = 0; d < D; ++d) {
                        kt[static_cast<std::size_t>(d * L + j)] = at(p.k, b, j, hk, d);
                        vf32[static_cast<std::size_t>(j * D + d)] = at(p.v, b, j, hk, d);
                    }
                for (std::int64_t i0 = 0; i0 < Lq; i0 += kPanel) {
                    const std::int64_t m = std::min(kPanel, Lq - i0);
                    for (std::int64_t i = 0; i < m; ++i)
                        for (std::int64_t d = 0; d < D; ++d)
                            qp[static_cast<std::size_t>(i * D + d)] = scale * at(p.q, b, i0 + i, h, d);
                    gemm(m, L, D, qp.data(), D, 1, kt.data(), L, s.data(), L, false);
                    for (std::int64_t i = 0; i < m; ++i) {
                        // The flash kernels' softmax arithmetic: scores in the log2 scale, the same exp2.
                        float* row = s.data() + i * L;
                        p.pattern->mask_row(p.q_pos[i0 + i], p.k_pos, L, mask.data());
                        p.lse[(b * H + h) * Lq + i0 + i] = softmax_row(row, L, mask.data());
                    }
                    gemm(m, D, L, s.data(), L, 1, vf32.data(), D, op.data(), D, false);
                    for (std::int64_t i = 0; i < m; ++i)
                        for (std::int64_t d = 0; d < D; ++d)
                            store_from_f32(p.o.data, p.o.dtype, p.o.offset(b, i0 + i, h, d), op[static_cast<std::size_t>(i * D + d)]);
                }
            }
    }
}

}  // namespace LONGATTN_ISA
}  // namespace longattn::kernels::cpu
LONGATTN_ISA_END
