#pragma once
// The instruction set of one compilation of the CPU kernels (flash_fwd.cpp, flash_bwd.cpp, baseline.cpp).
//
// A portable build (LONGATTN_ARCH=portable, the default) compiles each of them once per instruction set
// through a generated wrapper that defines LONGATTN_ISA (the name: avx512, avx2, sse2, generic) and
// LONGATTN_ISA_<name>; kernels/cpu/dispatch.cpp picks one at run time by the CPU. The rest of the
// translation unit stays at the build's baseline: the code of an instruction set is compiled under
// `#pragma GCC target` (clang: `#pragma clang attribute`) between LONGATTN_ISA_BEGIN and
// LONGATTN_ISA_END, after every header it uses, so that what those headers define (the standard
// library's templates, longattn's inline functions) is emitted at the baseline, and the linker, which
// keeps one copy of each, can never hand an AVX-512 copy to a machine without it. The kernels' own
// inline functions (simd.hpp, bwd_kernels.hpp, rows.hpp) live in an inline namespace named after the
// instruction set, so each compilation has its own.
//
// A build for one machine (LONGATTN_ARCH=native or any -march value) compiles them once, as "native",
// with the ISA flag on the command line; the vector width then follows the compiler's macros.
//
// Defines: LONGATTN_SIMD_LANES (floats per vector: 16, 8 or 4), LONGATTN_ISA_FMA (1 where fused
// multiply-adds are part of the set), LONGATTN_ISA_AVX512 (1 where the AVX-512 intrinsics may be used).
#if !defined(LONGATTN_ISA)
#error "kernels/cpu/isa_target.hpp: LONGATTN_ISA is set by the build (see the CPU kernels in CMakeLists.txt)"
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#if defined(LONGATTN_ISA_avx512)
#define LONGATTN_SIMD_LANES 16
#define LONGATTN_ISA_FMA 1
#define LONGATTN_ISA_AVX512 1
#if defined(__clang__)
#define LONGATTN_ISA_BEGIN                                                                                   \
    _Pragma("clang attribute push(__attribute__((target(\"avx512f,avx512bw,avx512dq,avx512vl,avx512cd,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt\"))), apply_to = function)")
#define LONGATTN_ISA_END _Pragma("clang attribute pop")
#else
#define LONGATTN_ISA_BEGIN \
    _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx512bw,avx512dq,avx512vl,avx512cd,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt\")")
#define LONGATTN_ISA_END _Pragma("GCC pop_options")
#endif
#elif defined(LONGATTN_ISA_avx2)
#define LONGATTN_SIMD_LANES 8
#define LONGATTN_ISA_FMA 1
#define LONGATTN_ISA_AVX512 0
#if defined(__clang__)
#define LONGATTN_ISA_BEGIN \
    _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt\"))), apply_to = function)")
#define LONGATTN_ISA_END _Pragma("clang attribute pop")
#else
#define LONGATTN_ISA_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt\")")
#define LONGATTN_ISA_END _Pragma("GCC pop_options")
#endif
#elif defined(LONGATTN_ISA_sse2) || defined(LONGATTN_ISA_generic)
// x86-64's baseline (SSE2), or the 128-bit vectors of another architecture: nothing to switch on.
#define LONGATTN_SIMD_LANES 4
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
#define LONGATTN_ISA_FMA 1
#else
#define LONGATTN_ISA_FMA 0
#endif
#define LONGATTN_ISA_AVX512 0
#define LONGATTN_ISA_BEGIN
#define LONGATTN_ISA_END
#elif defined(LONGATTN_ISA_native)
#if defined(__AVX512F__)
#define LONGATTN_SIMD_LANES 16
#define LONGATTN_ISA_AVX512 1
#elif defined(__AVX__)
#define LONGATTN_SIMD_LANES 8
#define LONGATTN_ISA_AVX512 0
#else
#define LONGATTN_SIMD_LANES 4
#define LONGATTN_ISA_AVX512 0
#endif
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
#define LONGATTN_ISA_FMA 1
#else
#define LONGATTN_ISA_FMA 0
#endif
#define LONGATTN_ISA_BEGIN
#define LONGATTN_ISA_END
#else
#error "kernels/cpu/isa_target.hpp: unknown LONGATTN_ISA"
#endif
