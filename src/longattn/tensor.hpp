#pragma once
// A non-owning view: (pointer, dtype, device, shape, strides), strides in elements.
// Attention tensors are bshd: Q [B, S, Hq, D], K/V [B, S, Hkv, D] (as FlashAttention).
// LSE is [B, Hq, S] fp32.
#include <array>
#include <cstdint>

#include "longattn/dtype.hpp"

namespace longattn {

enum class Device : std::uint8_t { cpu, cuda };

struct TensorView {
    void* data = nullptr;
    DType dtype = DType::f32;
    Device device = Device::cpu;
    int rank = 0;
    std::array<std::int64_t, 4> shape{};
    std::array<std::int64_t, 4> stride{};

    std::int64_t numel() const {
        std::int64_t n = 1;
        for (int i = 0; i < rank; ++i) n *= shape[i];
        return n;
    }
    template <class T>
    T* ptr() const { return static_cast<T*>(data); }
    // Element offset of a 4-d index.
    std::int64_t offset(std::int64_t a, std::int64_t b, std::int64_t c, std::int64_t d) const {
        return a * stride[0] + b * stride[1] + c * stride[2] + d * stride[3];
    }
    std::int64_t offset(std::int64_t a, std::int64_t b, std::int64_t c) const {
        return a * stride[0] + b * stride[1] + c * stride[2];
    }
};

// Contiguous row-major view.
inline TensorView contiguous_view(void* data, DType t, std::int64_t d0, std::int64_t d1, std::int64_t d2,
                                  std::int64_t d3) {
    TensorView v;
    v.data = data;
    v.dtype = t;
    v.rank = 4;
    v.shape = {d0, d1, d2, d3};
    v.stride = {d1 * d2 * d3, d2 * d3, d3, 1};
    return v;
}
inline TensorView contiguous_view(void* data, DType t, std::int64_t d0, std::int64_t d1, std::int64_t d2) {
    TensorView v;
    v.data = data;
    v.dtype = t;
    v.rank = 3;
    v.shape = {d0, d1, d2, 1};
    v.stride = {d1 * d2, d2, 1, 1};
    return v;
}

}  // namespace longattn
