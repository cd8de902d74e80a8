#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/tensor_ops_cuda.hpp"
#include "longattn/error.hpp"

namespace longattn::kernels {
namespace {

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw Error(std::string("cuda: ") + what + " failed: " + cudaGetErrorString(e));
}

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// A view flattened to what a kernel needs: 4 extents and strides (leading ones padded), dtype.
struct Flat {
    void* data;
    int dtype;
    std::int64_t shape[4], stride[4];
};

Flat flat(const TensorView& t) {
    require(t.device == Device::cuda, "tensor.device", "must be a CUDA tensor");
    Flat f{t.data, static_cast<int>(t.dtype), {1, 1, 1, 1}, {0, 0, 0, 0}};
    for (int i = 0; i < t.rank; ++i) {
        f.shape[4 - t.rank + i] = t.shape[i];
        f.stride[4 - t.rank + i] = t.stride[i];
    }
    return f;
}

void same_shape(const TensorView& a, const TensorView& b) {
    require(a.rank == b.rank, "tensor", "rank mismatch ", a.rank, " vs ", b.rank);
    for (int i = 0; i < a.rank; ++i)
        require(a.shape[i] == b.shape[i], "tensor", "shape mismatch in dim ", i, ": ", a.shape[i], " vs ", b.shape[i]);
}

__device__ std::int64_t offset_of(const Flat& f, std::int64_t n) {
    const std::int64_t d = n % f.shape[3];
    n /= f.shape[3];
    const std::int64_t c = n % f.shape[2];
    n /= f.shape[2];
    const std::int64_t b = n % f.shape[1];
    return (n / f.shape[1]) * f.stride[0] + b * f.stride[1] + c * f.stride[2] + d * f.stride[3];
}

__device__ float load(const Flat& f, std::int64_t off) {
    switch (f.dtype) {
        case 0: return static_cast<const float*>(f.data)[off];
        case 1: return __bfloat162float(static_cast<const __nv_bfloat16*>(f.data)[off]);
        default: return __half2float(static_cast<const __half*>(f.data)[off]);
    }
}

__device__ void store(const Flat& f, std::int64_t off, float x) {
    switch (f.dtype) {
        case 0: static_cast<float*>(f.data)[off] = x; break;
        case 1: static_cast<__nv_bfloat16*>(f.data)[off] = __float2bfloat16_rn(x); break;
        default: static_cast<__half*>(f.data)[off] = __float2half_rn(x); break;
    }
}

// op 0: dst = src; 1: dst += src; 2: dst = value.
__global__ void elementwise(Flat src, Flat dst, std::int64_t n, int op, float value) {
    for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        const std::int64_t od = offset_of(dst, i);
        if (op == 2) {
            store(dst, od, value);
            continue;
        }
        const float x = load(src, offset_of(src, i));
        store(dst, od, op == 1 ? load(dst, od) + x : x);
    }
}

void launch(const Flat& src, const Flat& dst, std::int64_t n, int op, float value, void* stream) {
    if (n == 0) return;
    constexpr int kThreads = 256;
    const std::int64_t blocks = (n + kThreads - 1) / kThreads;
    const int grid = static_cast<int>(blocks < 65536 ? blocks : 65536);
    elementwise<<<grid, kThreads, 0, as_stream(stream)>>>(src, dst, n, op, value);
    check(cudaGetLastError(), "elementwise kernel launch");
}

}  // namespace

void* cuda_alloc(std::size_t bytes) {
    void* p = nullptr;
    if (bytes == 0) return nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    require(e == cudaSuccess, "cuda.memory", "cannot allocate ", bytes, " bytes on the device: ", cudaGetErrorString(e));
    return p;
}

void cuda_free(void* p) {
    if (p) check(cudaFree(p), "cudaFree");
}

void cuda_synchronize(void* stream) { check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize"); }

void cuda_memcpy(void* dst, const void* src, std::size_t bytes) {
    if (bytes) check(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault), "cudaMemcpy");
}

void copy_cuda(const TensorView& src, const TensorView& dst, void* stream) {
    same_shape(src, dst);
    launch(flat(src), flat(dst), dst.numel(), 0, 0.0f, stream);
}

void add_cuda(const TensorView& src, const TensorView& dst, void* stream) {
    same_shape(src, dst);
    require(dst.dtype == DType::f32, "tensor.add_into", "destination must be fp32");
    launch(flat(src), flat(dst), dst.numel(), 1, 0.0f, stream);
}

void fill_cuda(const TensorView& dst, float value, void* stream) {
    const Flat d = flat(dst);
    launch(d, d, dst.numel(), 2, value, stream);
}

}  // namespace longattn::kernels
