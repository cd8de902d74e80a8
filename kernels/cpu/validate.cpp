#include <string>

#include "kernels/attention.hpp"
#include "longattn/error.hpp"

namespace longattn::kernels {
namespace {

constexpr std::int64_t kMaxHeadDim = 256;

void check_view(const TensorView& t, const std::string& name) {
    require(t.rank == 4, name.c_str(), "must be a rank-4 view [B, S, H, D], got rank ", t.rank);
    require(t.device == Device::cpu, name.c_str(), "must be a CPU tensor for the CPU kernels");
    for (int i = 0; i < 4; ++i)
        require(t.shape[i] >= 0, (name + ".shape[" + std::to_string(i) + "]").c_str(), "must be >= 0, got ",
                t.shape[i]);
    require(t.numel() == 0 || t.data != nullptr, (name + ".data").c_str(), "is null for a non-empty tensor");
    require(t.shape[3] <= 1 || t.stride[3] == 1, (name + ".stride[3]").c_str(),
            "the head dimension must be contiguous (stride 1), got ", t.stride[3]);
}

void check_same_shape(const TensorView& t, const std::string& name, const TensorView& ref, const char* ref_name) {
    for (int i = 0; i < 4; ++i)
        require(t.shape[i] == ref.shape[i], (name + ".shape[" + std::to_string(i) + "]").c_str(), "must equal ",
                ref_name, ".shape[", i, "] = ", ref.shape[i], ", got ", t.shape[i]);
}

// Shapes shared by forward and backward: Q [B, Sq, Hq, D], K and V [B, Sk, Hkv, D].
void check_qkv(const TensorView& q, const TensorView& k, const TensorView& v, const std::int64_t* q_pos,
               const std::int64_t* k_pos, const Pattern* pattern, std::int64_t head_offset) {
    check_view(q, "q");
    check_view(k, "k");
    check_view(v, "v");
    check_same_shape(v, "v", k, "k");
    require(k.shape[0] == q.shape[0], "k.shape[0]", "batch must equal q.shape[0] = ", q.shape[0], ", got ",
            k.shape[0]);
    require(k.shape[3] == q.shape[3], "k.shape[3]", "head dim must equal q.shape[3] = ", q.shape[3], ", got ",
            k.shape[3]);
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
            "pattern.alibi_slopes", "needs one slope per query head (", head_offset + q.shape[2], "), got ",
            slopes.size());
}

}  // namespace

void validate(const FwdParams& p) {
    check_qkv(p.q, p.k, p.v, p.q_pos, p.k_pos, p.pattern, p.head_offset);
    check_view(p.o, "o");
    check_same_shape(p.o, "o", p.q, "q");
    require(p.q.numel() == 0 || p.lse != nullptr, "lse", "is null");
    require(!p.accumulate || p.o.dtype == DType::f32, "o", "must be fp32 to accumulate into, got ", dtype_name(p.o.dtype));
    require(p.threads >= 0, "threads", "must be >= 0 (0 = all), got ", p.threads);
}

void validate(const BwdParams& p) {
    check_qkv(p.q, p.k, p.v, p.q_pos, p.k_pos, p.pattern, p.head_offset);
    check_view(p.o, "o");
    check_same_shape(p.o, "o", p.q, "q");
    check_view(p.dout, "dout");
    check_same_shape(p.dout, "dout", p.q, "q");
    check_view(p.dq, "dq");
    check_same_shape(p.dq, "dq", p.q, "q");
    check_view(p.dk, "dk");
    check_same_shape(p.dk, "dk", p.k, "k");
    check_view(p.dv, "dv");
    check_same_shape(p.dv, "dv", p.k, "k");
    require(p.dq.dtype == DType::f32 && p.dk.dtype == DType::f32 && p.dv.dtype == DType::f32, "dq/dk/dv",
            "gradients are fp32 views");
    require(p.q.numel() == 0 || p.lse != nullptr, "lse", "is null");
    require(p.threads >= 0, "threads", "must be >= 0 (0 = all), got ", p.threads);
}

}  // namespace longattn::kernels
