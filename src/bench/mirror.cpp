#include "bench/mirror.hpp"

#include <utility>

#include "longattn/error.hpp"
#ifdef LONGATTN_BENCH_CUDA
#include "kernels/cuda/tensor_ops_cuda.hpp"
#endif

namespace longattn::bench {

bool cuda_built() {
#ifdef LONGATTN_BENCH_CUDA
    return true;
#else
    return false;
#endif
}

Mirror::Mirror(const TensorView& host) : host_(host), dev_(host) {
    // Host views here are contiguous, so the bytes copy as one block.
    bytes_ = static_cast<std::size_t>(host.numel()) * dtype_size(host.dtype);
#ifdef LONGATTN_BENCH_CUDA
    dev_.data = kernels::cuda_alloc(bytes_);
    dev_.device = Device::cuda;
    kernels::cuda_memcpy(dev_.data, host_.data, bytes_);
#else
    throw Error("device: this build has no CUDA kernels (configure with -DLONGATTN_WITH_CUDA=ON)");
#endif
}

Mirror::~Mirror() {
#ifdef LONGATTN_BENCH_CUDA
    if (dev_.device == Device::cuda) kernels::cuda_free(dev_.data);
#endif
}

Mirror::Mirror(Mirror&& o) noexcept : host_(o.host_), dev_(o.dev_), bytes_(o.bytes_) { o.dev_ = TensorView{}; }

Mirror& Mirror::operator=(Mirror&& o) noexcept {
    std::swap(host_, o.host_);
    std::swap(dev_, o.dev_);
    std::swap(bytes_, o.bytes_);
    return *this;
}

void Mirror::to_host() const {
#ifdef LONGATTN_BENCH_CUDA
    kernels::cuda_memcpy(host_.data, dev_.data, bytes_);
#endif
}

}  // namespace longattn::bench
