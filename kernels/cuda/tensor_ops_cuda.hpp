#pragma once
// Device memory and elementwise tensor operations on CUDA views, for the strategies' device path
// (kernels/backend.hpp). Views have rank <= 4 and element strides; fp32, bf16 and fp16 convert
// through fp32 with round-to-nearest-even. Work is queued on `stream` (a cudaStream_t; nullptr is the
// legacy default stream, which orders it with the communicators' copies). Includes no CUDA header.
#include <cstddef>

#include "longattn/tensor.hpp"

namespace longattn::kernels {

void* cuda_alloc(std::size_t bytes);   // throws longattn::Error naming the size when out of memory
void cuda_free(void* p);
void cuda_synchronize(void* stream);
// Synchronous copy between any two of host and device memory.
void cuda_memcpy(void* dst, const void* src, std::size_t bytes);

void copy_cuda(const TensorView& src, const TensorView& dst, void* stream = nullptr);  // dst = src
void add_cuda(const TensorView& src, const TensorView& dst, void* stream = nullptr);   // dst (fp32) += src
void fill_cuda(const TensorView& dst, float value, void* stream = nullptr);

}  // namespace longattn::kernels
