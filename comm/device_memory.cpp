#include "comm/device_memory.hpp"

#include <stdexcept>
#include <string>

namespace longattn::comm {

void cuda_check(cudaError_t rc, const char* call) {
    if (rc == cudaSuccess) return;
    throw std::runtime_error(std::string("CUDA ") + call + " failed: " + cudaGetErrorName(rc) + ": " +
                             cudaGetErrorString(rc));
}

int cuda_device_count() {
    // Asked once: the answer cannot change within a process, and the query is not free.
    static const int count = [] {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess) {
            (void)cudaGetLastError();  // no driver or no device: not an error for a CPU run
            n = 0;
        }
        return n;
    }();
    return count;
}

bool is_device_memory(const void* p) {
    if (p == nullptr || cuda_device_count() == 0) return false;
    cudaPointerAttributes a{};
    const cudaError_t rc = cudaPointerGetAttributes(&a, p);
    if (rc != cudaSuccess) {
        // Older drivers report unregistered host memory as an invalid value instead of a type.
        (void)cudaGetLastError();
        if (rc == cudaErrorInvalidValue) return false;
        cuda_check(rc, "cudaPointerGetAttributes");
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

void copy_bytes(void* dst, const void* src, std::size_t bytes) {
    if (bytes == 0) return;
    cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault), "cudaMemcpy");
}

}  // namespace longattn::comm
