#include "kernels/backend.hpp"

#include <cstring>
#include <new>
#include <utility>

#include "longattn/build_config.hpp"
#include "longattn/error.hpp"
#include "longattn/tensor_ops.hpp"
#if LONGATTN_HAVE_CUDA
#include "kernels/cuda/flash_cuda.hpp"
#include "kernels/cuda/tensor_ops_cuda.hpp"
#endif

namespace longattn::kernels {
namespace {

const Backend kCpu{
    "cpu",
    true,
    [] { return true; },
    [](std::size_t bytes) { return bytes == 0 ? nullptr : ::operator new(bytes, std::align_val_t{64}); },
    [](void* p) {
        if (p) ::operator delete(p, std::align_val_t{64});
    },
    [](void* dst, const void* src, std::size_t bytes) {
        if (bytes) std::memcpy(dst, src, bytes);
    },
    [](const TensorView& src, const TensorView& dst) { longattn::copy(src, dst); },
    [](const TensorView& src, const TensorView& dst) { add_into(src, dst); },
    [](const TensorView& dst, float value) { longattn::fill(dst, value); },
    [](const FwdParams& p) { validate(p); },
    [](const BwdParams& p) { validate(p); },
    flash_forward_cpu,
    flash_backward_cpu,
    merge_partial,
};

#if LONGATTN_HAVE_CUDA
const Backend kCuda{
    "cuda",
    true,
    cuda_device_available,
    [](std::size_t bytes) { return bytes == 0 ? nullptr : cuda_alloc(bytes); },
    [](void* p) {
        if (p) cuda_free(p);
    },
    cuda_memcpy,
    [](const TensorView& src, const TensorView& dst) { copy_cuda(src, dst); },
    [](const TensorView& src, const TensorView& dst) { add_cuda(src, dst); },
    [](const TensorView& dst, float value) { fill_cuda(dst, value); },
    [](const FwdParams& p) { validate_cuda(p); },
    [](const BwdParams& p) { validate_cuda(p); },
    [](const FwdParams& p) {
        flash_forward_cuda(p);
        cuda_synchronize(p.stream);
    },
    [](const BwdParams& p) {
        flash_backward_cuda(p);
        cuda_synchronize(p.stream);
    },
    [](TensorView o_acc, float* lse_acc, TensorView o_new, const float* lse_new, int) {
        merge_partial_cuda(o_acc, lse_acc, o_new, lse_new, nullptr);
        cuda_synchronize(nullptr);
    },
};
#else
[[noreturn]] void no_cuda() {
    throw Error("tensor.device: CUDA tensors need a build with CUDA (configure with -DLONGATTN_WITH_CUDA=ON)");
}
const Backend kCuda{
    "cuda",
    false,
    [] { return false; },
    [](std::size_t) -> void* { no_cuda(); },
    [](void*) { no_cuda(); },
    [](void*, const void*, std::size_t) { no_cuda(); },
    [](const TensorView&, const TensorView&) { no_cuda(); },
    [](const TensorView&, const TensorView&) { no_cuda(); },
    [](const TensorView&, float) { no_cuda(); },
    [](const FwdParams&) { no_cuda(); },
    [](const BwdParams&) { no_cuda(); },
    [](const FwdParams&) { no_cuda(); },
    [](const BwdParams&) { no_cuda(); },
    [](TensorView, float*, TensorView, const float*, int) { no_cuda(); },
};
#endif

void same_device(const TensorView& a, const TensorView& b) {
    require(a.device == b.device, "tensor.device", "source and destination must be on the same device");
}

}  // namespace

const Backend& backend(Device d) { return d == Device::cuda ? kCuda : kCpu; }

void copy_view(const TensorView& src, const TensorView& dst) {
    same_device(src, dst);
    backend_of(dst).copy(src, dst);
}

void add_view(const TensorView& src, const TensorView& dst) {
    same_device(src, dst);
    backend_of(dst).add(src, dst);
}

DeviceCopy::DeviceCopy(Device d, const TensorView& host, std::size_t bytes) : host_(host), dev_(host) {
    if (d == Device::cpu) return;
    // The view's whole extent copies as one block, strides and all.
    bytes_ = bytes ? bytes : static_cast<std::size_t>(host.numel()) * dtype_size(host.dtype);
    const Backend& be = backend(d);
    dev_.data = be.alloc(bytes_);
    dev_.device = d;
    be.memcpy(dev_.data, host_.data, bytes_);
}

DeviceCopy::~DeviceCopy() {
    if (dev_.device != Device::cpu) backend(dev_.device).free(dev_.data);
}

DeviceCopy::DeviceCopy(DeviceCopy&& o) noexcept : host_(o.host_), dev_(o.dev_), bytes_(o.bytes_) { o.dev_ = TensorView{}; }

DeviceCopy& DeviceCopy::operator=(DeviceCopy&& o) noexcept {
    std::swap(host_, o.host_);
    std::swap(dev_, o.dev_);
    std::swap(bytes_, o.bytes_);
    return *this;
}

void DeviceCopy::to_host() const {
    if (dev_.device != Device::cpu) backend(dev_.device).memcpy(host_.data, dev_.data, bytes_);
}

}  // namespace longattn::kernels
