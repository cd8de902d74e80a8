#pragma once
// Storage types. Arithmetic is always fp32 (or fp64 in the reference).
#include <cstdint>
#include <cstring>
#include <string_view>

namespace longattn {

enum class DType : std::uint8_t { f32, bf16, f16 };

inline std::size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }
inline std::string_view dtype_name(DType t) {
    return t == DType::f32 ? "fp32" : t == DType::bf16 ? "bf16" : "fp16";
}

// Round-to-nearest-even fp32 -> bf16; NaN stays NaN.
inline std::uint16_t f32_to_bf16(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>(u >> 16);
}
inline float bf16_to_f32(std::uint16_t h) {
    std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
// IEEE half via the compiler's _Float16 (F16C on x86-64), round-to-nearest-even.
inline std::uint16_t f32_to_f16(float f) {
    _Float16 h = static_cast<_Float16>(f);
    std::uint16_t u;
    std::memcpy(&u, &h, 2);
    return u;
}
inline float f16_to_f32(std::uint16_t u) {
    _Float16 h;
    std::memcpy(&h, &u, 2);
    return static_cast<float>(h);
}

inline float load_as_f32(const void* p, DType t, std::int64_t i) {
    switch (t) {
        case DType::f32: return static_cast<const float*>(p)[i];
        case DType::bf16: return bf16_to_f32(static_cast<const std::uint16_t*>(p)[i]);
        default: return f16_to_f32(static_cast<const std::uint16_t*>(p)[i]);
    }
}
inline void store_from_f32(void* p, DType t, std::int64_t i, float x) {
    switch (t) {
        case DType::f32: static_cast<float*>(p)[i] = x; break;
        case DType::bf16: static_cast<std::uint16_t*>(p)[i] = f32_to_bf16(x); break;
        default: static_cast<std::uint16_t*>(p)[i] = f32_to_f16(x); break;
    }
}
// Value after a round trip through storage type t (used by references to emulate precision).
inline float round_to(DType t, float x) {
    return t == DType::f32 ? x : t == DType::bf16 ? bf16_to_f32(f32_to_bf16(x)) : f16_to_f32(f32_to_f16(x));
}

}  // namespace longattn
