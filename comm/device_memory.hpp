#pragma once
// What the communicators (MPI and NCCL) need to know about CUDA memory (builds with CUDA only). Everything here
// answers "host memory" on a machine without a usable GPU, so a CUDA build runs the CPU path there.
#include <cuda_runtime_api.h>

#include <cstddef>

namespace longattn::comm {

// Throws std::runtime_error naming the call and CUDA's message unless rc is cudaSuccess.
void cuda_check(cudaError_t rc, const char* call);

// Number of visible devices; 0 when there is no device or no driver (the error is cleared).
int cuda_device_count();

// True for device and managed memory: memory MPI cannot read unless it is CUDA-aware. Pinned host
// memory, pageable host memory and null answer false.
bool is_device_memory(const void* p);

// cudaMemcpy in either direction; plain host copies included.
void copy_bytes(void* dst, const void* src, std::size_t bytes);

}  // namespace longattn::comm
