#include "longattn/synth.hpp"

namespace longattn {
namespace {

std::uint64_t mix(std::uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

}  // namespace

float synth_value(std::uint64_t seed, SynthTensor t, std::int64_t batch, std::int64_t token, std::int64_t head,
                  std::int64_t dim) {
    std::uint64_t h = mix(seed ^ (static_cast<std::uint64_t>(t) << 56));
    h = mix(h ^ static_cast<std::uint64_t>(batch));
    h = mix(h ^ static_cast<std::uint64_t>(token));
    h = mix(h ^ (static_cast<std::uint64_t>(head) << 32 | static_cast<std::uint64_t>(dim)));
    // 24 random bits -> [-1, 1) exactly representable in fp32.
    return static_cast<float>(static_cast<std::int64_t>(h >> 40) - (1 << 23)) * (1.0f / (1 << 23));
}

void fill_synth(const TensorView& view, std::uint64_t seed, SynthTensor t, const std::int64_t* positions) {
    const std::int64_t B = view.shape[0], S = view.shape[1], H = view.shape[2], D = view.shape[3];
#pragma omp parallel for collapse(2) schedule(static)
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t s = 0; s < S; ++s)
            for (std::int64_t h = 0; h < H; ++h)
                for (std::int64_t d = 0; d < D; ++d)
                    store_from_f32(view.data, view.dtype, view.offset(b, s, h, d),
                                   synth_value(seed, t, b, positions[s], h, d));
}

}  // namespace longattn
