#pragma once
// The strategies' tensor work on the device their tensors live on: the host (tensor_ops and the CPU
// flash kernels) or a CUDA device (kernels/cuda, in a build with CUDA), chosen by the views' device
// field. Strategies never touch tensor memory any other way, so one strategy file serves both.
#include <cstddef>

#include "kernels/attention.hpp"
#include "longattn/tensor.hpp"

namespace longattn::dist {

void* device_alloc(Device d, std::size_t bytes);
void device_free(Device d, void* p, std::size_t bytes);

// dst = src (shapes equal, dtypes may differ); dst (fp32) += src; dst = value everywhere.
void copy_view(const TensorView& src, const TensorView& dst);
void add_view(const TensorView& src, const TensorView& dst);
void fill_view(const TensorView& dst, float value);

// The flash kernels of the tensors' device; they return once the results are ready to be read or
// sent (a CUDA call synchronizes its stream).
void kernel_forward(const kernels::FwdParams& p);
void kernel_backward(const kernels::BwdParams& p);
void kernel_validate(const kernels::FwdParams& p);
void kernel_validate(const kernels::BwdParams& p);

}  // namespace longattn::dist
