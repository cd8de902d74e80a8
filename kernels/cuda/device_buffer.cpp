#include <cuda_runtime.h>

#include <string>
#include <utility>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/flash_cuda.hpp"

namespace longattn::kernels {

using cuda::as_stream;
using cuda::cuda_check;

DeviceBuffer::DeviceBuffer(std::size_t bytes, void* stream) : bytes_(bytes), stream_(stream) {
    if (bytes == 0) return;
    int dev = 0, pools = 0;
    cuda_check(cudaGetDevice(&dev), "cudaGetDevice");
    cuda_check(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev), "cudaDeviceGetAttribute");
    const std::string what = "allocating " + std::to_string(bytes) + " bytes of device memory";
    // The stream-ordered allocator frees without waiting for the stream; plain cudaMalloc otherwise.
    if (pools != 0) {
        cuda_check(cudaMallocAsync(&ptr_, bytes, as_stream(stream)), what.c_str());
        pooled_ = true;
    } else {
        cuda_check(cudaMalloc(&ptr_, bytes), what.c_str());
    }
}

DeviceBuffer::~DeviceBuffer() { release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)), stream_(o.stream_), pooled_(o.pooled_) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
        release();
        ptr_ = std::exchange(o.ptr_, nullptr);
        bytes_ = std::exchange(o.bytes_, 0);
        stream_ = o.stream_;
        pooled_ = o.pooled_;
    }
    return *this;
}

void DeviceBuffer::release() noexcept {
    if (ptr_ == nullptr) return;
    // Errors here would be those of earlier work, already reported by its own check.
    if (pooled_) {
        (void)cudaFreeAsync(ptr_, as_stream(stream_));
    } else {
        (void)cudaStreamSynchronize(as_stream(stream_));
        (void)cudaFree(ptr_);
    }
    ptr_ = nullptr;
    bytes_ = 0;
}

void DeviceBuffer::upload(const void* host, std::size_t bytes, std::size_t offset) {
    if (bytes == 0) return;
    cuda_check(cudaMemcpyAsync(static_cast<char*>(ptr_) + offset, host, bytes, cudaMemcpyHostToDevice, as_stream(stream_)),
               "cudaMemcpyAsync (upload)");
}

void DeviceBuffer::upload(std::vector<std::byte> host, std::size_t offset) {
    if (host.empty()) return;
    // The runtime does not promise that a copy from pageable memory has read its source when the call
    // returns: the bytes are freed by a host function queued after the copy.
    auto* keep = new std::vector<std::byte>(std::move(host));
    try {
        upload(keep->data(), keep->size(), offset);
        cuda_check(cudaLaunchHostFunc(
                       as_stream(stream_), [](void* p) { delete static_cast<std::vector<std::byte>*>(p); }, keep),
                   "cudaLaunchHostFunc (upload)");
    } catch (...) {
        // The copy may still be queued; waiting for the stream makes freeing safe.
        (void)cudaStreamSynchronize(as_stream(stream_));
        delete keep;
        throw;
    }
}

void DeviceBuffer::download(void* host, std::size_t bytes, std::size_t offset) const {
    if (bytes == 0) return;
    cuda_check(cudaMemcpyAsync(host, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost,
                               as_stream(stream_)),
               "cudaMemcpyAsync (download)");
    cuda_check(cudaStreamSynchronize(as_stream(stream_)), "cudaStreamSynchronize (download)");
}

bool cuda_device_available() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();  // clear the sticky "no device" status for later calls
        return false;
    }
    return n > 0;
}

}  // namespace longattn::kernels
