#include "strategies/device.hpp"

#include <new>

#include "longattn/error.hpp"
#include "longattn/tensor_ops.hpp"
#ifdef LONGATTN_DIST_CUDA
#include "kernels/cuda/flash_cuda.hpp"
#include "kernels/cuda/tensor_ops_cuda.hpp"
#endif

namespace longattn::dist {
namespace {

#ifndef LONGATTN_DIST_CUDA
[[noreturn]] void no_cuda() {
    throw Error("tensor.device: CUDA tensors need a build with CUDA (configure with -DLONGATTN_WITH_CUDA=ON)");
}
#endif

void same_device(const TensorView& a, const TensorView& b) {
    require(a.device == b.device, "tensor.device", "source and destination must be on the same device");
}

}  // namespace

void* device_alloc(Device d, std::size_t bytes) {
    if (bytes == 0) return nullptr;
    if (d == Device::cpu) return ::operator new(bytes, std::align_val_t{64});
#ifdef LONGATTN_DIST_CUDA
    return kernels::cuda_alloc(bytes);
#else
    no_cuda();
#endif
}

void device_free(Device d, void* p, std::size_t) {
    if (p == nullptr) return;
    if (d == Device::cpu) return ::operator delete(p, std::align_val_t{64});
#ifdef LONGATTN_DIST_CUDA
    kernels::cuda_free(p);
#else
    no_cuda();
#endif
}

void copy_view(const TensorView& src, const TensorView& dst) {
    same_device(src, dst);
    if (dst.device == Device::cpu) return copy(src, dst);
#ifdef LONGATTN_DIST_CUDA
    kernels::copy_cuda(src, dst);
#else
    no_cuda();
#endif
}

void add_view(const TensorView& src, const TensorView& dst) {
    same_device(src, dst);
    if (dst.device == Device::cpu) return add_into(src, dst);
#ifdef LONGATTN_DIST_CUDA
    kernels::add_cuda(src, dst);
#else
    no_cuda();
#endif
}

void fill_view(const TensorView& dst, float value) {
    if (dst.device == Device::cpu) return fill(dst, value);
#ifdef LONGATTN_DIST_CUDA
    kernels::fill_cuda(dst, value);
#else
    no_cuda();
#endif
}

void kernel_forward(const kernels::FwdParams& p) {
    if (p.q.device == Device::cpu) return kernels::flash_forward_cpu(p);
#ifdef LONGATTN_DIST_CUDA
    kernels::flash_forward_cuda(p);
    kernels::cuda_synchronize(p.stream);
#else
    no_cuda();
#endif
}

void kernel_backward(const kernels::BwdParams& p) {
    if (p.q.device == Device::cpu) return kernels::flash_backward_cpu(p);
#ifdef LONGATTN_DIST_CUDA
    kernels::flash_backward_cuda(p);
    kernels::cuda_synchronize(p.stream);
#else
    no_cuda();
#endif
}

void kernel_validate(const kernels::FwdParams& p) {
    if (p.q.device == Device::cpu) return kernels::validate(p);
#ifdef LONGATTN_DIST_CUDA
    kernels::validate_cuda(p);
#else
    no_cuda();
#endif
}

void kernel_validate(const kernels::BwdParams& p) {
    if (p.q.device == Device::cpu) return kernels::validate(p);
#ifdef LONGATTN_DIST_CUDA
    kernels::validate_cuda(p);
#else
    no_cuda();
#endif
}

}  // namespace longattn::dist
