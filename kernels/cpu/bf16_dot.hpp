#pragma once
// Products of two bf16 operands by AVX512-BF16 dot products: the forward's S = Q K^T for bf16 q and k,
// and all five products of the backward for bf16 inputs (S and dP exact, P and dS rounded to bf16 for
// dV, dK and dQ, as the plain bf16 implementation stores them). One instruction adds the products of two
// values to 16 fp32 accumulators; a bf16 product is exact in fp32, so the sum has the fp32 path's error. Subnormal inputs count as zero (the instruction flushes them), which moves a score by
// less than 2^-126. LONGATTN_BF16_TILES: these and the forward's AMX tiles are compiled (the portable
// build's AVX-512 compilation, GCC), for dispatch.cpp's avx512-bf16 and avx512-amx.
//
// Operands: A holds rows of pairs, A(r, p) = a[r * lda + 2p .. 2p + 1] (or, ColA, a[p * lda + 2r .. 2r + 1]:
// the pairs of row r for consecutive r are neighbours); B holds rows of pairs per output column,
// B(p, j) = b[p * ldb + 2j .. 2j + 1] (e.g. dims 2p and 2p + 1 of key j); lda and ldb count bf16.
#include <cstdint>
#include <cstring>

#include "kernels/cpu/simd.hpp"

#if defined(LONGATTN_ISA_avx512) && !defined(__clang__)
#define LONGATTN_BF16_TILES 1
#else
#define LONGATTN_BF16_TILES 0
#endif

#if LONGATTN_BF16_TILES
LONGATTN_ISA_BEGIN
namespace longattn::kernels::cpu {
inline namespace LONGATTN_ISA {

#define LONGATTN_DPBF16 __attribute__((target("avx512bf16")))

inline __m512bh bf16_pair(const std::uint16_t* a) {
    std::uint32_t w;
    std::memcpy(&w, a, sizeof w);
    return (__m512bh)_mm512_set1_epi32(static_cast<int>(w));
}

// C[R rows][C vectors] (+)= A B over `pairs` pairs; rmax, when given, takes each row's lane-wise max
// (one vector per row).
template <int R, int C, bool ColA = false>
LONGATTN_DPBF16 inline void dot_tile_bf16(std::int64_t pairs, const std::uint16_t* a, std::int64_t lda,
                                          const std::uint16_t* b, std::int64_t ldb, float* c, std::int64_t ldc,
                                          float* rmax, bool accumulate = false) {
    __m512 acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < C; ++v) acc[r][v] = accumulate ? (__m512)load(c + r * ldc + v * kLanes) : _mm512_setzero_ps();
    for (std::int64_t p = 0; p < pairs; ++p) {
        __m512bh bv[C];
        for (int v = 0; v < C; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + p * ldb + v * 2 * kLanes);
        for (int r = 0; r < R; ++r) {
            const __m512bh s = bf16_pair(ColA ? a + p * lda + 2 * r : a + r * lda + 2 * p);
            for (int v = 0; v < C; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], s, bv[v]);
        }
    }
    for (int r = 0; r < R; ++r) {
        vf m = rmax ? load(rmax + r * kLanes) : vf{};
        for (int v = 0; v < C; ++v) {
            const vf x = (vf)acc[r][v];
            store(c + r * ldc + v * kLanes, x);
            m = vmax(m, x);
        }
        if (rmax) store(rmax + r * kLanes, m);
    }
}

template <bool ColA, int C>
LONGATTN_DPBF16 inline void dot_panel_bf16(std::int64_t M, std::int64_t pairs, const std::uint16_t* a,
                                           std::int64_t lda, const std::uint16_t* b, std::int64_t ldb, float* c,
                                           std::int64_t ldc, bool acc) {
    constexpr int R = kTileRows;
    const std::int64_t a_step = ColA ? 2 : lda;
    std::int64_t i = 0;
    for (; i + R <= M; i += R)
        dot_tile_bf16<R, C, ColA>(pairs, a + i * a_step, lda, b, ldb, c + i * ldc, ldc, nullptr, acc);
    const std::uint16_t* ai = a + i * a_step;
    float* ci = c + i * ldc;
    switch (M - i) {
        case 5: dot_tile_bf16<5, C, ColA>(pairs, ai, lda, b, ldb, ci, ldc, nullptr, acc); break;
        case 4: dot_tile_bf16<4, C, ColA>(pairs, ai, lda, b, ldb, ci, ldc, nullptr, acc); break;
        case 3: dot_tile_bf16<3, C, ColA>(pairs, ai, lda, b, ldb, ci, ldc, nullptr, acc); break;
        case 2: dot_tile_bf16<2, C, ColA>(pairs, ai, lda, b, ldb, ci, ldc, nullptr, acc); break;
        case 1: dot_tile_bf16<1, C, ColA>(pairs, ai, lda, b, ldb, ci, ldc, nullptr, acc); break;
        default: break;
    }
}

// C[M rows][nv vectors] (+)= A B; accumulate = false overwrites C.
template <bool ColA = false>
LONGATTN_DPBF16 inline void dot_gemm_bf16(std::int64_t M, std::int64_t nv, std::int64_t pairs, const std::uint16_t* a,
                                          std::int64_t lda, const std::uint16_t* b, std::int64_t ldb, float* c,
                                          std::int64_t ldc, bool accumulate = false) {
    std::int64_t v = 0;
    for (; v + 4 <= nv; v += 4)
        dot_panel_bf16<ColA, 4>(M, pairs, a, lda, b + v * 2 * kLanes, ldb, c + v * kLanes, ldc, accumulate);
    const std::uint16_t* bv = b + v * 2 * kLanes;
    float* cv = c + v * kLanes;
    switch (nv - v) {
        case 3: dot_panel_bf16<ColA, 3>(M, pairs, a, lda, bv, ldb, cv, ldc, accumulate); break;
        case 2: dot_panel_bf16<ColA, 2>(M, pairs, a, lda, bv, ldb, cv, ldc, accumulate); break;
        case 1: dot_panel_bf16<ColA, 1>(M, pairs, a, lda, bv, ldb, cv, ldc, accumulate); break;
        default: break;
    }
}

// 16 lanes of each of two rows, rounded to bf16 (to nearest even) and interleaved, x0[0], x1[0], x0[1], ...:
// the pairs of two rows that a ColA operand reads.
LONGATTN_DPBF16 inline void store_pairs_bf16(std::uint16_t* out, vf x0, vf x1) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i both = (__m512i)_mm512_cvtne2ps_pbh((__m512)x1, (__m512)x0);
    _mm512_storeu_si512(out, _mm512_permutexvar_epi16(idx, both));
}

// 16 lanes rounded to bf16 (to nearest even), stored in order.
LONGATTN_DPBF16 inline void store_bf16(std::uint16_t* out, vf x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), (__m256i)_mm512_cvtneps_pbh((__m512)x));
}

// sum_p x(p) . y(p) for two rows of dim pairs, with the arithmetic, in the order, of one lane of
// dot_tile_bf16 (x in A's place): the backward's delta = rowsum(dO * O) then cancels dP exactly where
// O is one V row.
LONGATTN_DPBF16 inline float dot_row_bf16(std::int64_t pairs, const std::uint16_t* x, const std::uint16_t* y) {
    __m512 acc = _mm512_setzero_ps();
    for (std::int64_t p = 0; p < pairs; ++p) acc = _mm512_dpbf16_ps(acc, bf16_pair(x + 2 * p), bf16_pair(y + 2 * p));
    return _mm512_cvtss_f32(acc);
}

}  // namespace LONGATTN_ISA
}  // namespace longattn::kernels::cpu
LONGATTN_ISA_END
#endif
