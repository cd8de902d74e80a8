// Argument checks of the CUDA kernels: the CPU contract's shapes plus what the CUDA kernels support.
// Pure host logic (no device is touched), so they run anywhere.
#include <cstdint>
#include <limits>
#include <string>

#include "kernels/cuda/flash_cuda.hpp"
#include "longattn/error.hpp"

namespace longattn::kernels {
namespace {

constexpr std::int64_t kMaxHeadDim = 256;
constexpr std::int64_t kMaxInt = std::numeric_limits<std::int32_t>::max();

void check_view(const TensorView& t, const std::string& name) {
    require(t.rank == 4, name.c_str(), "must be a rank-4 view [B, S, H, D], got rank ", t.rank);
    require(t.device == Device::cuda, (name + ".device").c_str(), "must be cuda for the CUDA kernels (got cpu)");
    for (int i = 0; i < 4; ++i)
        require(t.shape[i] >= 0 && t.shape[i] <= kMaxInt, (name + ".shape[" + std::to_string(i) + "]").c_str(),
                "must be in [0, 2^31), got ", t.shape[i]);
    require(t.numel() == 0 || t.data != nullptr, (name + ".data").c_str(), "is null for a non-empty tensor");
    require(t.shape[3] <= 1 || t.stride[3] == 1, (name + ".stride[3]").c_str(),
            "the head dimension must be contiguous (stride 1), got ", t.stride[3]);
}

void check_same_shape(const TensorView& t, const std::string& name, const TensorView& ref, const char* ref_name) {
    for (int i = 0; i < 4; ++i)
        require(t.shape[i] == ref.shape[i], (name + ".shape[" + std::to_string(i) + "]").c_str(), "must equal ",
                ref_name, ".shape[", i, "] = ", ref.shape[i], ", got ", t.shape[i]);
}

void check_input_dtype(const TensorView& t, const char* name, DType want) {
    require(t.dtype == want, name, "must have q's dtype ", dtype_name(want), " (bf16 or fp16, all the same), got ",
            dtype_name(t.dtype));
}

void check_qkv(const TensorView& q, const TensorView& k, const TensorView& v, const std::int64_t* q_pos,
               const std::int64_t* k_pos, const Pattern* pattern, std::int64_t head_offset) {
    check_view(q, "q");
    check_view(k, "k");
    check_view(v, "v");
    require(q.dtype == DType::bf16 || q.dtype == DType::f16, "q.dtype",
            "the CUDA kernels take bf16 or fp16 inputs, got ", dtype_name(q.dtype));
    check_input_dtype(k, "k.dtype", q.dtype);
    check_input_dtype(v, "v.dtype", q.dtype);
    check_same_shape(v, "v", k, "k");
    require(k.shape[0] == q.shape[0], "k.shape[0]", "batch must equal q.shape[0] = ", q.shape[0], ", got ", k.shape[0]);
    require(k.shape[3] == q.shape[3], "k.shape[3]", "head dim must equal q.shape[3] = ", q.shape[3], ", got ", k.shape[3]);
    require(q.shape[3] >= 1 && q.shape[3] <= kMaxHeadDim, "q.shape[3]", "head dim must be in [1, ", kMaxHeadDim,
            "], got ", q.shape[3]);
    require(k.shape[2] >= 1, "k.shape[2]", "kv heads must be >= 1, got ", k.shape[2]);
    require(q.shape[2] % k.shape[2] == 0, "q.shape[2]", "query heads (", q.shape[2],
            ") must be a multiple of kv heads k.shape[2] (", k.shape[2], ")");
    require(q.shape[1] == 0 || q_pos != nullptr, "q_pos", "is null but the query has ", q.shape[1], " rows");
    require(k.shape[1] == 0 || k_pos != nullptr, "k_pos", "is null but the keys have ", k.shape[1], " rows");
    require(pattern != nullptr, "pattern", "is null");
    const auto& slopes = pattern->spec().alibi_slopes;
    require(head_offset >= 0, "head_offset", "must be >= 0, got ", head_offset);
    require(slopes.empty() || static_cast<std::int64_t>(slopes.size()) >= head_offset + q.shape[2],
            "pattern.alibi_slopes", "needs one slope per query head (", head_offset + q.shape[2], "), got ", slopes.size());
    // CTAs are numbered by (tile, batch, head) in one 31-bit grid dimension.
    const std::int64_t ctas = (q.shape[1] + 63) / 64 * q.shape[0] * q.shape[2] * 4;
    const std::int64_t kv_ctas = (k.shape[1] + 63) / 64 * k.shape[0] * k.shape[2] * 4;
    require(ctas <= kMaxInt && kv_ctas <= kMaxInt, "q.shape", "too many (tile, batch, head) blocks for one launch: ",
            q.shape[0], " x ", q.shape[1], " x ", q.shape[2], " (split the call)");
}

}  // namespace

void validate_cuda(const FwdParams& p) {
    check_qkv(p.q, p.k, p.v, p.q_pos, p.k_pos, p.pattern, p.head_offset);
    check_view(p.o, "o");
    check_same_shape(p.o, "o", p.q, "q");
    require(p.o.dtype == p.q.dtype || p.o.dtype == DType::f32, "o.dtype", "must be q's dtype (", dtype_name(p.q.dtype),
            ") or fp32, got ", dtype_name(p.o.dtype));
    require(!p.accumulate || p.o.dtype == DType::f32, "o", "must be fp32 to accumulate into, got ", dtype_name(p.o.dtype));
    require(p.q.numel() == 0 || p.lse != nullptr, "lse", "is null");
}

void validate_cuda(const BwdParams& p) {
    check_qkv(p.q, p.k, p.v, p.q_pos, p.k_pos, p.pattern, p.head_offset);
    check_view(p.o, "o");
    check_same_shape(p.o, "o", p.q, "q");
    require(p.o.dtype == p.q.dtype || p.o.dtype == DType::f32, "o.dtype", "must be q's dtype (", dtype_name(p.q.dtype),
            ") or fp32, got ", dtype_name(p.o.dtype));
    check_view(p.dout, "dout");
    check_same_shape(p.dout, "dout", p.q, "q");
    check_input_dtype(p.dout, "dout.dtype", p.q.dtype);
    check_view(p.dq, "dq");
    check_same_shape(p.dq, "dq", p.q, "q");
    check_view(p.dk, "dk");
    check_same_shape(p.dk, "dk", p.k, "k");
    check_view(p.dv, "dv");
    check_same_shape(p.dv, "dv", p.k, "k");
    require(p.dq.dtype == DType::f32 && p.dk.dtype == DType::f32 && p.dv.dtype == DType::f32, "dq/dk/dv",
            "gradients must be fp32 views, got ", dtype_name(p.dq.dtype), "/", dtype_name(p.dk.dtype), "/",
            dtype_name(p.dv.dtype));
    require(p.q.numel() == 0 || p.lse != nullptr, "lse", "is null");
}

}  // namespace longattn::kernels
