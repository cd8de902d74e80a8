// Merging two partial attention results (O normalized, LSE natural log) of the same query rows.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/attention.hpp"
#include "longattn/error.hpp"

namespace longattn::kernels {

void merge_partial(TensorView o_acc, float* lse_acc, TensorView o_new, const float* lse_new, int threads) {
    require(o_acc.rank == 4 && o_new.rank == 4, "merge_partial", "o_acc and o_new must be rank-4 views [B, S, H, D]");
    require(o_acc.dtype == DType::f32, "merge_partial.o_acc", "must be fp32, got ", dtype_name(o_acc.dtype));
    for (int i = 0; i < 4; ++i)
        require(o_new.shape[i] == o_acc.shape[i], "merge_partial.o_new", "shape[", i, "] must equal o_acc's ",
                o_acc.shape[i], ", got ", o_new.shape[i]);
    require(threads >= 0, "merge_partial.threads", "must be >= 0 (0 = all), got ", threads);
    const std::int64_t B = o_acc.shape[0], S = o_acc.shape[1], H = o_acc.shape[2], D = o_acc.shape[3];
    if (B * S * H == 0) return;
    require(lse_acc != nullptr && lse_new != nullptr, "merge_partial.lse", "is null");
    require(D == 0 || (o_acc.data != nullptr && o_new.data != nullptr), "merge_partial.o", "is null");

    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    const int nt = threads > 0 ? threads : omp_get_max_threads();
    float* acc = o_acc.ptr<float>();
    const std::int64_t rows = B * S * H;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (std::int64_t t = 0; t < rows; ++t) {
        const std::int64_t b = t / (S * H), s = (t / H) % S, h = t % H;
        const std::int64_t li = (b * H + h) * S + s;
        const float l1 = lse_acc[li], l2 = lse_new[li];
        float* o1 = acc + o_acc.offset(b, s, h, 0);
        const std::int64_t off2 = o_new.offset(b, s, h, 0);
        const std::int64_t st1 = o_acc.stride[3], st2 = o_new.stride[3];
        if (std::isnan(l1) || std::isnan(l2)) {
            // A partial that met a NaN makes the row NaN, whatever the other holds.
            for (std::int64_t d = 0; d < D; ++d) o1[d * st1] = std::numeric_limits<float>::quiet_NaN();
            lse_acc[li] = std::numeric_limits<float>::quiet_NaN();
            continue;
        }
        if (l2 == kNegInf) {
            // The new shard saw no key: the accumulator is unchanged, and a row empty in both stays O = 0.
            if (l1 == kNegInf)
                for (std::int64_t d = 0; d < D; ++d) o1[d * st1] = 0.0f;
            continue;
        }
        if (l1 == kNegInf) {
            for (std::int64_t d = 0; d < D; ++d) o1[d * st1] = load_as_f32(o_new.data, o_new.dtype, off2 + d * st2);
            lse_acc[li] = l2;
            continue;
        }
        // logaddexp around the larger term, so neither exponential can overflow, in double. The weights
        // come from the difference of the two LSEs, never from the rounded result: at |LSE| near 88 one
        // fp32 ulp is 7.6e-6, which exp(l - lse) would carry into O as a relative error.
        const double mx = std::max(l1, l2), e = std::exp(static_cast<double>(std::min(l1, l2)) - mx);
        const float wmx = static_cast<float>(1.0 / (1.0 + e)), wmn = static_cast<float>(e / (1.0 + e));
        const float lse = static_cast<float>(mx + std::log1p(e));
        const float w1 = l1 >= l2 ? wmx : wmn, w2 = l1 >= l2 ? wmn : wmx;
        for (std::int64_t d = 0; d < D; ++d)
            o1[d * st1] = w1 * o1[d * st1] + w2 * load_as_f32(o_new.data, o_new.dtype, off2 + d * st2);
        lse_acc[li] = lse;
    }
}

}  // namespace longattn::kernels
