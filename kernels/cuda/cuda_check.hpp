#pragma once
// CUDA runtime failures become std::runtime_error naming the call (bad input is longattn::Error,
// raised before anything is queued).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace longattn::kernels::cuda {

inline void cuda_check(cudaError_t e, const char* what) {
    if (e != cudaSuccess)
        throw std::runtime_error(std::string("cuda: ") + what + " failed: " + cudaGetErrorName(e) + ": " +
                                 cudaGetErrorString(e));
}

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

}  // namespace longattn::kernels::cuda
