// Argument checks of the CUDA kernels: the contract's checks (kernels/checks.hpp) for CUDA views plus
// what the CUDA kernels support. Pure host logic (no device is touched), so they run anywhere.
#include <cstdint>
#include <limits>

#include "kernels/checks.hpp"
#include "kernels/cuda/flash_cuda.hpp"
#include "longattn/error.hpp"

namespace longattn::kernels {
namespace {

constexpr std::int64_t kMaxInt = std::numeric_limits<std::int32_t>::max();

void check_input_dtype(const TensorView& t, const char* name, DType want) {
    require(t.dtype == want, name, "must have q's dtype ", dtype_name(want), " (bf16 or fp16, all the same), got ",
            dtype_name(t.dtype));
}

// Storage types and launch limits of the CUDA kernels, after the contract's checks.
void check_cuda_inputs(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o) {
    require(q.dtype == DType::bf16 || q.dtype == DType::f16, "q.dtype",
            "the CUDA kernels take bf16 or fp16 inputs, got ", dtype_name(q.dtype));
    check_input_dtype(k, "k.dtype", q.dtype);
    check_input_dtype(v, "v.dtype", q.dtype);
    require(o.dtype == q.dtype || o.dtype == DType::f32, "o.dtype", "must be q's dtype (", dtype_name(q.dtype),
            ") or fp32, got ", dtype_name(o.dtype));
    // CTAs are numbered by (tile, batch, head) in one 31-bit grid dimension.
    const std::int64_t ctas = (q.shape[1] + 63) / 64 * q.shape[0] * q.shape[2] * 4;
    const std::int64_t kv_ctas = (k.shape[1] + 63) / 64 * k.shape[0] * k.shape[2] * 4;
    require(ctas <= kMaxInt && kv_ctas <= kMaxInt, "q.shape", "too many (tile, batch, head) blocks for one launch: ",
            q.shape[0], " x ", q.shape[1], " x ", q.shape[2], " (split the call)");
}

}  // namespace

void validate_cuda(const FwdParams& p) {
    checks::forward(p, Device::cuda);
    check_cuda_inputs(p.q, p.k, p.v, p.o);
}

void validate_cuda(const BwdParams& p) {
    checks::backward(p, Device::cuda);
    check_cuda_inputs(p.q, p.k, p.v, p.o);
    check_input_dtype(p.dout, "dout.dtype", p.q.dtype);
}

}  // namespace longattn::kernels
