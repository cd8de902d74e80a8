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

#ifdef __CUDACC__
// Launches a tiled kernel on `stream` with `smem` bytes of dynamic shared memory, opting in above the
// default limit first; `what` names the kernel in errors.
template <class Args>
void launch_tiled(void (*kernel)(Args), unsigned grid, int threads, int smem, void* stream, const Args& a,
                  const char* what) {
    cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
               (std::string(what) + " shared-memory opt-in").c_str());
    kernel<<<grid, threads, static_cast<std::size_t>(smem), as_stream(stream)>>>(a);
    cuda_check(cudaGetLastError(), (std::string(what) + " launch").c_str());
}
#endif

}  // namespace longattn::kernels::cuda
