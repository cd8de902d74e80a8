#pragma once
// Moving tiles between global and shared memory, and the score transform shared by the kernels.
#include <cstdint>
#include <cstring>

#include "kernels/cuda/kernel_args.hpp"
#include "kernels/cuda/warp_ops.cuh"

namespace longattn::kernels::cuda {

constexpr float kLog2e = 1.4426950408889634f;

// A shared-memory tile holds rows of DP 16-bit elements at a pitch of DP + 8: the 16-byte skew puts the
// 8 rows of one ldmatrix phase in 8 different bank groups (pitches of 144, 272, 528 bytes are 16 mod 128).
template <int DP>
inline constexpr int kPitch = DP + 8;

// Rows [0, R) x dims [0, DP) of one (batch, head) slice into `tile`: element (r, c) is base[r * row_stride
// + c] for r < nrows and c < D, else 0, so padded rows and dims add nothing to any product. With `vec`
// the copies are asynchronous (committed by the caller); otherwise they are plain stores, complete when
// this returns. Either way they are visible to the CTA after its next barrier.
template <int R, int DP, int NT>
__device__ __forceinline__ void load_tile(std::uint16_t* tile, const std::uint16_t* base, std::int64_t row_stride,
                                          int nrows, int D, bool vec) {
    constexpr int kChunks = DP / 8, kTotal = R * kChunks;
    static_assert(kTotal % NT == 0, "every thread copies the same number of chunks");
    const std::uint32_t s0 = smem_addr(tile);
    // Not unrolled: unrolled, the compiler keeps every chunk's 64-bit source address live at once, which
    // costs the accumulators their registers (spills) in the kernels that prefetch during their loop.
#pragma unroll 1
    for (int it = 0; it < kTotal / NT; ++it) {
        const int idx = it * NT + static_cast<int>(threadIdx.x);
        const int r = idx / kChunks, c = (idx % kChunks) * 8;
        const bool valid = r < nrows && c < D;
        if (vec) {
            cp_async<16>(s0 + static_cast<std::uint32_t>(r * kPitch<DP> + c) * 2u, valid ? base + r * row_stride + c : base,
                         valid);
        } else {
            std::uint16_t v[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] = valid && c + i < D ? base[r * row_stride + c + i] : std::uint16_t{0};
            uint4 u;
            std::memcpy(&u, v, 16);
            *reinterpret_cast<uint4*>(tile + r * kPitch<DP> + c) = u;
        }
    }
}

// Element pointer of (b, s, h, 0) of a 16-bit tensor.
__device__ __forceinline__ const std::uint16_t* row_ptr(const DevTensor& t, int b, std::int64_t s, int h) {
    return static_cast<const std::uint16_t*>(t.data) + b * t.sb + s * t.ss + h * t.sh;
}

__device__ __forceinline__ void store_value(void* base, OutType type, std::int64_t off, float x) {
    switch (type) {
        case OutType::f32: static_cast<float*>(base)[off] = x; break;
        case OutType::bf16: static_cast<__nv_bfloat16*>(base)[off] = __float2bfloat16_rn(x); break;
        default: static_cast<__half*>(base)[off] = __float2half_rn(x); break;
    }
}

__device__ __forceinline__ float load_value(const void* base, OutType type, std::int64_t off) {
    switch (type) {
        case OutType::f32: return static_cast<const float*>(base)[off];
        case OutType::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[off]);
        default: return __half2float(static_cast<const __half*>(base)[off]);
    }
}

// Score of one pair in the log2 scale of the softmax, with softcap and ALiBi applied in the natural scale
// first (as the CPU kernels). `gate` is d(capped score) / d(scaled score), 1 without softcap. dist is
// |q_pos - k_pos|, read only when slope != 0.
__device__ __forceinline__ float general_score(float dot, const ScoreMod& m, float slope, float dist, float& gate) {
    float x = dot * m.scale;
    gate = 1.0f;
    if (m.softcap > 0.0f) {
        // tanh(y) = (e^{2y} - 1) / (e^{2y} + 1); |y| >= 9 is +-1 in fp32 already.
        // A NaN score stays NaN (fminf and fmaxf would drop it).
        const float y = isnan(x) ? x : fminf(fmaxf(x * m.inv_softcap, -9.0f), 9.0f);
        const float e = exp2f(y * (2.0f * kLog2e));
        const float t = __fdividef(e - 1.0f, e + 1.0f);
        x = m.softcap * t;
        gate = 1.0f - t * t;
    }
    if (slope != 0.0f) x -= slope * dist;
    return x;
}

__device__ __forceinline__ float pos_distance(const std::int64_t* q_pos, const std::int64_t* k_pos, std::int64_t i,
                                              std::int64_t j) {
    const std::int64_t d = q_pos[i] - k_pos[j];
    return static_cast<float>(d < 0 ? -d : d);
}

// Bits [0, n) of a word, 0 <= n <= 64: the keys a tile really has.
__device__ __forceinline__ std::uint64_t low_bits(int n) {
    return n >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << n) - 1;
}

}  // namespace longattn::kernels::cuda
