#pragma once
// --device cuda: the bench keeps its inputs and results on the host (to fill and check them) and runs
// on device copies. A Mirror is one such copy; in a build without CUDA constructing one throws.
#include <cstddef>

#include "longattn/tensor.hpp"

namespace longattn::bench {

bool cuda_built();  // this build has the CUDA kernels

class Mirror {
public:
    Mirror() = default;
    explicit Mirror(const TensorView& host);  // device memory of the same shape, filled from host
    ~Mirror();
    Mirror(Mirror&& o) noexcept;
    Mirror& operator=(Mirror&& o) noexcept;
    Mirror(const Mirror&) = delete;
    Mirror& operator=(const Mirror&) = delete;
    const TensorView& device() const { return dev_; }
    void to_host() const;  // host view = device contents

private:
    TensorView host_, dev_;
    std::size_t bytes_ = 0;
};

// LSE [B, H, S] as a rank-4 view, so it can be mirrored like the tensors.
inline TensorView lse_view(float* lse, std::int64_t B, std::int64_t H, std::int64_t S) {
    return contiguous_view(lse, DType::f32, B, H, S, 1);
}

}  // namespace longattn::bench
