#pragma once
// Rows of a tensor in any storage type to and from fp32, scaled on the way (the kernels fold the
// softmax scale into Q as it is loaded and 1/l into O as it is stored).
#include <algorithm>
#include <cstdint>

#include "kernels/cpu/isa_target.hpp"
#include "longattn/dtype.hpp"
#include "longattn/tensor.hpp"

LONGATTN_ISA_BEGIN
namespace longattn::kernels::cpu {
inline namespace LONGATTN_ISA {

// out[0, n) = mul * row[0, n) converted to fp32.
inline void load_row(const void* base, DType t, std::int64_t off, std::int64_t n, float mul, float* out) {
    switch (t) {
        case DType::f32: {
            const float* p = static_cast<const float*>(base) + off;
            for (std::int64_t i = 0; i < n; ++i) out[i] = mul * p[i];
            break;
        }
        case DType::bf16: {
            const std::uint16_t* p = static_cast<const std::uint16_t*>(base) + off;
            for (std::int64_t i = 0; i < n; ++i) out[i] = mul * bf16_to_f32(p[i]);
            break;
        }
        default: {
            const std::uint16_t* p = static_cast<const std::uint16_t*>(base) + off;
            for (std::int64_t i = 0; i < n; ++i) out[i] = mul * f16_to_f32(p[i]);
            break;
        }
    }
}

inline void store_row(void* base, DType t, std::int64_t off, std::int64_t n, float mul, const float* in) {
    switch (t) {
        case DType::f32: {
            float* p = static_cast<float*>(base) + off;
            for (std::int64_t i = 0; i < n; ++i) p[i] = mul * in[i];
            break;
        }
        case DType::bf16: {
            std::uint16_t* p = static_cast<std::uint16_t*>(base) + off;
            for (std::int64_t i = 0; i < n; ++i) p[i] = f32_to_bf16(mul * in[i]);
            break;
        }
        default: {
            std::uint16_t* p = static_cast<std::uint16_t*>(base) + off;
            for (std::int64_t i = 0; i < n; ++i) p[i] = f32_to_f16(mul * in[i]);
            break;
        }
    }
}

// Rows j0 .. j0 + n of t (batch b, head h, its first d values each) into rows of stride ld floats: in
// fp32, or as stored when raw16 (2-byte storage kept for bf16 dot products; ld floats hold 2 ld values).
// The kernels copy a key block's rows this way before packing them: copies with nothing in between keep
// many rows' loads in flight, where scattering each row into a packed layout as it arrives waits on
// memory row after row.
inline void stage_rows(const TensorView& t, std::int64_t b, std::int64_t h, std::int64_t j0, std::int64_t n,
                       std::int64_t d, std::int64_t ld, bool raw16, float* rows) {
    for (std::int64_t j = 0; j < n; ++j) {
        if (!raw16) {
            load_row(t.data, t.dtype, t.offset(b, j0 + j, h, 0), d, 1.0f, rows + j * ld);
        } else {
            const auto* src = static_cast<const std::uint16_t*>(t.data) + t.offset(b, j0 + j, h, 0);
            std::copy(src, src + d, reinterpret_cast<std::uint16_t*>(rows + j * ld));
        }
    }
}

}  // namespace LONGATTN_ISA
}  // namespace longattn::kernels::cpu
LONGATTN_ISA_END
