#pragma once
// fp32 building blocks of the CPU flash backward kernel on simd.hpp's vector type: a 2^x accurate to
// half an fp32 ulp (the backward recomputes P from the stored LSE, so it wants every bit the forward's
// faster polynomial gives up), and register-blocked broadcast-FMA products with a compile-time choice
// of which operand axis is contiguous.
#include <cstdint>

#include "kernels/cpu/simd.hpp"

LONGATTN_ISA_BEGIN
namespace longattn::kernels::bwd {
inline namespace LONGATTN_ISA {

using cpu::kLanes;
using cpu::kTileRows;
using cpu::load;
using cpu::splat;
using cpu::store;
using cpu::vf;

// 2^f for f in [-0.5, 0.5]: the Taylor series of e^{f ln 2} to degree 7; the first omitted term is
// below 6e-9 relative, under half an fp32 ulp.
inline vf exp2_frac(vf f) {
    vf p = splat(1.5252733804059841e-5f);
    p = p * f + 1.5403530393381606e-4f;
    p = p * f + 1.3333558146428443e-3f;
    p = p * f + 9.6181291076284772e-3f;
    p = p * f + 5.5504108664821580e-2f;
    p = p * f + 0.24022650695910071f;
    p = p * f + 0.69314718055994531f;
    p = p * f + 1.0f;
    return p;
}

inline vf exp2v(vf x) { return cpu::exp2v_with<exp2_frac>(x); }

// Operand layouts of C[M x nv vectors] (+)= A[M x K] B[K x nv vectors]; B rows and C rows are contiguous.
//   RowA:  A(i, k) = a[i * lda + k]  (Q K^T, dO V^T, dS K)
//   ColA:  A(i, k) = a[k * lda + i]  (P^T dO, dS^T Q: the stored matrix read transposed, so the R
//          broadcasts of one k step are neighbours in memory)
enum class ALayout { row, col };

template <ALayout L, int R, int C>
inline void tile(std::int64_t K, const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float* c,
                 std::int64_t ldc, bool accumulate) {
    vf acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < C; ++v) acc[r][v] = accumulate ? load(c + r * ldc + v * kLanes) : vf{};
    for (std::int64_t k = 0; k < K; ++k) {
        vf bv[C];
        for (int v = 0; v < C; ++v) bv[v] = load(b + k * ldb + v * kLanes);
        for (int r = 0; r < R; ++r) {
            const float s = L == ALayout::row ? a[r * lda + k] : a[k * lda + r];
            for (int v = 0; v < C; ++v) acc[r][v] += s * bv[v];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < C; ++v) store(c + r * ldc + v * kLanes, acc[r][v]);
}

template <ALayout L, int C>
inline void row_panel(std::int64_t M, std::int64_t K, const float* a, std::int64_t lda, const float* b,
                      std::int64_t ldb, float* c, std::int64_t ldc, bool accumulate) {
    constexpr int R = kTileRows;
    const std::int64_t a_step = L == ALayout::row ? lda : 1;
    std::int64_t i = 0;
    for (; i + R <= M; i += R) tile<L, R, C>(K, a + i * a_step, lda, b, ldb, c + i * ldc, ldc, accumulate);
    const float* ai = a + i * a_step;
    float* ci = c + i * ldc;
    switch (M - i) {
        case 5: tile<L, 5, C>(K, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 4: tile<L, 4, C>(K, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 3: tile<L, 3, C>(K, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 2: tile<L, 2, C>(K, ai, lda, b, ldb, ci, ldc, accumulate); break;
        case 1: tile<L, 1, C>(K, ai, lda, b, ldb, ci, ldc, accumulate); break;
        default: break;
    }
}

// C[M x nv vectors] (+)= A B; accumulate = false overwrites C.
template <ALayout L>
inline void gemm(std::int64_t M, std::int64_t nv, std::int64_t K, const float* a, std::int64_t lda, const float* b,
                 std::int64_t ldb, float* c, std::int64_t ldc, bool accumulate) {
    std::int64_t v = 0;
    for (; v + 4 <= nv; v += 4)
        row_panel<L, 4>(M, K, a, lda, b + v * kLanes, ldb, c + v * kLanes, ldc, accumulate);
    switch (nv - v) {
        case 3: row_panel<L, 3>(M, K, a, lda, b + v * kLanes, ldb, c + v * kLanes, ldc, accumulate); break;
        case 2: row_panel<L, 2>(M, K, a, lda, b + v * kLanes, ldb, c + v * kLanes, ldc, accumulate); break;
        case 1: row_panel<L, 1>(M, K, a, lda, b + v * kLanes, ldb, c + v * kLanes, ldc, accumulate); break;
        default: break;
    }
}

}  // namespace LONGATTN_ISA
}  // namespace longattn::kernels::bwd
LONGATTN_ISA_END
