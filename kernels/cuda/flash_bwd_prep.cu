// Per-row inputs of the backward kernels: delta = rowsum(dO * O) from the final O, and the LSE with
// +inf for a row without keys, so that P = exp(s - inf) = 0 exactly.
// One warp per row; the warp's sum has a fixed shape, so reruns give the same bits.
#include <cmath>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/tile_io.cuh"

namespace longattn::kernels::cuda {
namespace {

__global__ void __launch_bounds__(256) bwd_prep_kernel(const PrepArgs a) {
    const std::int64_t rows = static_cast<std::int64_t>(a.B) * a.Hq * a.Sq;
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (blockDim.x / 32);
    for (std::int64_t row = blockIdx.x * static_cast<std::int64_t>(blockDim.x / 32) + threadIdx.x / 32; row < rows;
         row += warps) {
        // row = (b * Hq + h) * Sq + i, the LSE index.
        const int i = static_cast<int>(row % a.Sq);
        const int h = static_cast<int>((row / a.Sq) % a.Hq);
        const int b = static_cast<int>(row / (static_cast<std::int64_t>(a.Sq) * a.Hq));
        const std::int64_t oo = b * a.o.sb + i * a.o.ss + h * a.o.sh;
        const std::int64_t od = b * a.dout.sb + i * a.dout.ss + h * a.dout.sh;
        float sum = 0.0f;
        for (int d = lane; d < a.D; d += 32) sum += load_value(a.dout.data, a.dout_type, od + d) * load_value(a.o.data, a.o_type, oo + d);
#pragma unroll
        for (int w = 16; w > 0; w >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, w);
        if (lane == 0) {
            const float lse = a.lse[row];
            a.lse_row[row] = lse == -INFINITY ? INFINITY : lse;
            a.delta[row] = sum;
        }
    }
}

}  // namespace

void launch_bwd_prep(const PrepArgs& a, void* stream) {
    const std::int64_t rows = static_cast<std::int64_t>(a.B) * a.Hq * a.Sq;
    if (rows == 0) return;
    constexpr int kThreads = 256, kRowsPerBlock = kThreads / 32;
    const std::int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    const unsigned grid = static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
    bwd_prep_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(a);
    cuda_check(cudaGetLastError(), "flash backward preprocessing launch");
}

}  // namespace longattn::kernels::cuda
