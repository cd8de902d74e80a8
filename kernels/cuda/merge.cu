// merge_partial on the device, with the CPU merge's arithmetic (kernels/cpu/merge.cpp): one warp per
// row, since every element of a row needs the row's two LSEs before the LSE is overwritten.
#include <cmath>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/tile_io.cuh"

namespace longattn::kernels::cuda {
namespace {

struct MergeArgs {
    DevTensor acc, next;
    OutType next_type;
    float* lse_acc;
    const float* lse_new;
    int B, S, H, D;
};

__global__ void __launch_bounds__(256) merge_kernel(const MergeArgs a) {
    const std::int64_t rows = static_cast<std::int64_t>(a.B) * a.S * a.H;
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (blockDim.x / 32);
    for (std::int64_t t = blockIdx.x * static_cast<std::int64_t>(blockDim.x / 32) + threadIdx.x / 32; t < rows; t += warps) {
        // t enumerates (b, s, h) as the CPU merge does; the LSE index is (b * H + h) * S + s.
        const int h = static_cast<int>(t % a.H);
        const int s = static_cast<int>((t / a.H) % a.S);
        const int b = static_cast<int>(t / (static_cast<std::int64_t>(a.H) * a.S));
        const std::int64_t li = (static_cast<std::int64_t>(b) * a.H + h) * a.S + s;
        const float l1 = a.lse_acc[li], l2 = a.lse_new[li];
        __syncwarp();  // every lane has read the row's LSE before lane 0 may overwrite it
        float* o1 = static_cast<float*>(a.acc.data) + b * a.acc.sb + s * a.acc.ss + h * a.acc.sh;
        const std::int64_t off2 = b * a.next.sb + s * a.next.ss + h * a.next.sh;
        if (isnan(l1) || isnan(l2)) {
            // A partial that met a NaN makes the row NaN, whatever the other holds.
            for (int d = lane; d < a.D; d += 32) o1[d] = NAN;
            if (lane == 0) a.lse_acc[li] = NAN;
            continue;
        }
        if (l2 == -INFINITY) {
            // The new shard saw no key: the accumulator stays, and a row empty in both is O = 0.
            if (l1 == -INFINITY)
                for (int d = lane; d < a.D; d += 32) o1[d] = 0.0f;
            continue;
        }
        if (l1 == -INFINITY) {
            for (int d = lane; d < a.D; d += 32) o1[d] = load_value(a.next.data, a.next_type, off2 + d);
            if (lane == 0) a.lse_acc[li] = l2;
            continue;
        }
        // logaddexp around the larger term in double, the weights from the difference of the two LSEs,
        // never from the rounded result (kernels/cpu/merge.cpp).
        const double mx = fmax(l1, l2), e = exp(static_cast<double>(fminf(l1, l2)) - mx);
        const float wmx = static_cast<float>(1.0 / (1.0 + e)), wmn = static_cast<float>(e / (1.0 + e));
        const float lse = static_cast<float>(mx + log1p(e));
        const float w1 = l1 >= l2 ? wmx : wmn, w2 = l1 >= l2 ? wmn : wmx;
        for (int d = lane; d < a.D; d += 32) o1[d] = w1 * o1[d] + w2 * load_value(a.next.data, a.next_type, off2 + d);
        if (lane == 0) a.lse_acc[li] = lse;
    }
}

}  // namespace

void launch_merge(const DevTensor& o_acc, float* lse_acc, const DevTensor& o_new, OutType new_type, const float* lse_new,
                  int B, int S, int H, int D, void* stream) {
    const std::int64_t rows = static_cast<std::int64_t>(B) * S * H;
    if (rows == 0) return;
    constexpr int kThreads = 256, kRowsPerBlock = kThreads / 32;
    const std::int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    const unsigned grid = static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
    merge_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(MergeArgs{o_acc, o_new, new_type, lse_acc, lse_new, B, S, H, D});
    cuda_check(cudaGetLastError(), "merge_partial launch");
}

}  // namespace longattn::kernels::cuda
