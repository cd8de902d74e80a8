#pragma once
// Small fp32 building blocks shared by the CPU flash kernels and the benchmark's unfused baseline.
// Written with GCC vector extensions at the vector width of the instruction set being compiled
// (kernels/cpu/isa_target.hpp), so that one source compiles to AVX-512 (zmm), AVX2 (ymm) or SSE (xmm);
// hot loops are shaped so the compiler emits broadcast-FMAs.
#include <cstdint>
#include <cstring>

#include "kernels/cpu/isa_target.hpp"

LONGATTN_ISA_BEGIN
namespace longattn::kernels::cpu {
inline namespace LONGATTN_ISA {

// The vector width: 16 floats (AVX-512), 8 (AVX2) or 4 (SSE2). A tile of accumulators is kTileRows
// rows by 4 vectors: 24 of AVX-512's 32 registers, 12 of the 16 the narrower sets have.
constexpr int kLanes = LONGATTN_SIMD_LANES;
constexpr int kTileRows = kLanes == 16 ? 6 : 3;
typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef float vf_u __attribute__((vector_size(4 * kLanes), aligned(4), may_alias));

inline vf load(const float* p) { return *reinterpret_cast<const vf_u*>(p); }
inline void store(float* p, vf x) { *reinterpret_cast<vf_u*>(p) = x; }
inline vf splat(float s) { return vf{} + s; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
// x clamped to [lo, hi] lane-wise; a NaN lane stays NaN (a NaN input must reach the output).
inline vf clamp(vf x, float lo, float hi) {
    x = x < lo ? splat(lo) : x;
    return x > hi ? splat(hi) : x;
}

typedef std::int32_t vi __attribute__((vector_size(4 * kLanes)));

inline float hsum(vf x) {
    float s = 0.0f;
    for (int i = 0; i < kLanes; ++i) s += x[i];
    return s;
}
inline float hmax(vf x) {
    float m = x[0];
    for (int i = 1; i < kLanes; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

// 2^f for f in [-0.5, 0.5]: a degree-6 near-minimax polynomial (Chebyshev-node fit, 2e-8 before fp32
// rounding). The forward's exponent: relative error about 1e-7 after rounding.
inline vf exp2_poly(vf f) {
    vf p = splat(1.5461444854736328e-4f);
    p = p * f + 1.3400427997112274e-3f;
    p = p * f + 9.618056938052177e-3f;
    p = p * f + 5.550327152013779e-2f;
    p = p * f + 0.24022650718688965f;
    p = p * f + 0.6931471824645996f;
    p = p * f + 1.0f;
    return p;
}

// 2^x lane-wise for x < 128 as 2^n * Poly(f), n = round(x), f = x - n in [-0.5, 0.5]. x = -inf (a
// masked score), and anything small enough to underflow, gives exactly 0: masked scores and rows
// without keys rely on that to contribute nothing. NaN gives NaN.
template <vf (*Poly)(vf)>
inline vf exp2v_with(vf x) {
#if LONGATTN_ISA_AVX512
    // Below -200 the scaled result underflows to exactly 0; the clamp also turns -inf into a finite n.
    // The all-lanes mask forms keep GCC 12 from warning about the unmasked forms' undefined pass-through.
    x = x < -200.0f ? splat(-200.0f) : x;
    const __m512 xm = (__m512)x;
    const __m512 n = _mm512_mask_roundscale_ps(xm, 0xffff, xm, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 p = (__m512)Poly(x - (vf)n);
    return (vf)_mm512_mask_scalef_ps(p, 0xffff, p, n);
#else
    // Without vscalefps 2^n is built in the exponent field, valid for n >= -126; smaller inputs flush to 0.
    const vf lo = splat(-126.0f);
    const vf xc = x < lo ? lo : x;
    const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer in the low bits
    const vf t = xc + magic;
    const vf n = t - magic;
    const vf p = Poly(xc - n);
    const vi e = ((vi)t - (vi)magic + 127) << 23;
    const vf r = p * (vf)e;
    return x < lo ? vf{} : r;
#endif
}

inline vf exp2v(vf x) { return exp2v_with<exp2_poly>(x); }

// C[M x N] (+)= A[M x K] * B[K x N] with
//   A(i, k) = a[i * a_rs + k * a_ks]   (any strides: A or A^T)
//   B(k, j) = b[k * b_rs + j]          (rows contiguous)
//   C(i, j) = c[i * c_rs + j]
// accumulate = false overwrites C.
template <int R, int C>
inline void gemm_tile(std::int64_t K, const float* a, std::int64_t a_rs, std::int64_t a_ks, const float* b,
                      std::int64_t b_rs, float* c, std::int64_t c_rs, bool accumulate) {
    vf acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < C; ++v) acc[r][v] = accumulate ? load(c + r * c_rs + v * kLanes) : vf{};
    for (std::int64_t k = 0; k < K; ++k) {
        vf bv[C];
        for (int v = 0; v < C; ++v) bv[v] = load(b + k * b_rs + v * kLanes);
        for (int r = 0; r < R; ++r) {
            const float s = a[r * a_rs + k * a_ks];
            for (int v = 0; v < C; ++v) acc[r][v] += s * bv[v];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < C; ++v) store(c + r * c_rs + v * kLanes, acc[r][v]);
}

inline void gemm(std::int64_t M, std::int64_t N, std::int64_t K, const float* a, std::int64_t a_rs,
                 std::int64_t a_ks, const float* b, std::int64_t b_rs, float* c, std::int64_t c_rs,
                 bool accumulate) {
    constexpr int R = kTileRows, C = 4;
    std::int64_t j = 0;
    for (; j + C * kLanes <= N; j += C * kLanes) {
        std::int64_t i = 0;
        for (; i + R <= M; i += R)
            gemm_tile<R, C>(K, a + i * a_rs, a_rs, a_ks, b + j, b_rs, c + i * c_rs + j, c_rs, accumulate);
        for (; i < M; ++i)
            gemm_tile<1, C>(K, a + i * a_rs, a_rs, a_ks, b + j, b_rs, c + i * c_rs + j, c_rs, accumulate);
    }
    for (; j + kLanes <= N; j += kLanes) {
        std::int64_t i = 0;
        for (; i + R <= M; i += R)
            gemm_tile<R, 1>(K, a + i * a_rs, a_rs, a_ks, b + j, b_rs, c + i * c_rs + j, c_rs, accumulate);
        for (; i < M; ++i)
            gemm_tile<1, 1>(K, a + i * a_rs, a_rs, a_ks, b + j, b_rs, c + i * c_rs + j, c_rs, accumulate);
    }
    if (j < N) {  // column tail: plain loops
        for (std::int64_t i = 0; i < M; ++i)
            for (std::int64_t jj = j; jj < N; ++jj) {
                float s = accumulate ? c[i * c_rs + jj] : 0.0f;
                for (std::int64_t k = 0; k < K; ++k) s += a[i * a_rs + k * a_ks] * b[k * b_rs + jj];
                c[i * c_rs + jj] = s;
            }
    }
}

}  // namespace LONGATTN_ISA
}  // namespace longattn::kernels::cpu
LONGATTN_ISA_END
