#pragma once
// Small fp32 building blocks shared by the CPU flash kernels and the benchmark's unfused baseline.
// Written with GCC vector extensions so that one source compiles to AVX-512 (zmm), AVX2 (ymm pairs)
// or SSE, whatever -march says; hot loops are shaped so the compiler emits broadcast-FMAs.
#include <cstdint>
#include <cstring>

namespace longattn::kernels::cpu {

constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(64)));
typedef float vf_u __attribute__((vector_size(64), aligned(4), may_alias));

inline vf load(const float* p) { return *reinterpret_cast<const vf_u*>(p); }
inline void store(float* p, vf x) { *reinterpret_cast<vf_u*>(p) = x; }
inline vf splat(float s) { return vf{} + s; }

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
    constexpr int R = 6, C = 4;
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

}  // namespace longattn::kernels::cpu
