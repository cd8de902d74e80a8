#include <limits>
#include <string>

#include "kernels/attention.hpp"
#include "kernels/checks.hpp"
#include "longattn/error.hpp"

namespace longattn::kernels {
namespace checks {
namespace {

constexpr std::int64_t kMaxHeadDim = 256;
constexpr std::int64_t kMaxInt = std::numeric_limits<std::int32_t>::max();

}  // namespace

void view(const TensorView& t, const std::string& name, Device device) {
    require(t.rank == 4, name.c_str(), "must be a rank-4 view [B, S, H, D], got rank ", t.rank);
    if (device == Device::cpu)
        require(t.device == Device::cpu, name.c_str(), "must be a CPU tensor for the CPU kernels");
    else
        require(t.device == Device::cuda, (name + ".device").c_str(), "must be cuda for the CUDA kernels (got cpu)");
    for (int i = 0; i < 4; ++i) {
        const std::string field = name + ".shape[" + std::to_string(i) + "]";
        if (device == Device::cpu)
            require(t.shape[i] >= 0, field.c_str(), "must be >= 0, got ", t.shape[i]);
        else
            require(t.shape[i] >= 0 && t.shape[i] <= kMaxInt, field.c_str(), "must be in [0, 2^31), got ", t.shape[i]);
    }
    require(t.numel() == 0 || t.data != nullptr, (name + ".data").c_str(), "is null for a non-empty tensor");
    require(t.shape[3] <= 1 || t.stride[3] == 1, (name + ".stride[3]").c_str(),
            "the head dimension must be contiguous (stride 1), got ", t.stride[3]);
}

void same_shape(const TensorView& t, const std::string& name, const TensorView& ref, const char* ref_name) {
    for (int i = 0; i < 4; ++i)
        require(t.shape[i] == ref.shape[i], (name + ".shape[" + std::to_string(i) + "]").c_str(), "must equal ",
                ref_name, ".shape[", i, "] = ", ref.shape[i], ", got ", t.shape[i]);
}

void qkv(const TensorView& q, const TensorView& k, const TensorView& v, const std::int64_t* q_pos,
         const std::int64_t* k_pos, const Pattern* pattern, std::int64_t head_offset, Device device) {
    view(q, "q", device);
    view(k, "k", device);
    view(v, "v", device);
    same_shape(v, "v", k, "k");
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

void forward(const FwdParams& p, Device device) {
    qkv(p.q, p.k, p.v, p.q_pos, p.k_pos, p.pattern, p.head_offset, device);
    view(p.o, "o", device);
    same_shape(p.o, "o", p.q, "q");
    require(p.q.numel() == 0 || p.lse != nullptr, "lse", "is null");
    require(!p.accumulate || p.o.dtype == DType::f32, "o", "must be fp32 to accumulate into, got ", dtype_name(p.o.dtype));
}

void backward(const BwdParams& p, Device device) {
    qkv(p.q, p.k, p.v, p.q_pos, p.k_pos, p.pattern, p.head_offset, device);
    view(p.o, "o", device);
    same_shape(p.o, "o", p.q, "q");
    view(p.dout, "dout", device);
    same_shape(p.dout, "dout", p.q, "q");
    view(p.dq, "dq", device);
    same_shape(p.dq, "dq", p.q, "q");
    view(p.dk, "dk", device);
    same_shape(p.dk, "dk", p.k, "k");
    view(p.dv, "dv", device);
    same_shape(p.dv, "dv", p.k, "k");
    require(p.dq.dtype == DType::f32 && p.dk.dtype == DType::f32 && p.dv.dtype == DType::f32, "dq/dk/dv",
            "gradients must be fp32 views, got ", dtype_name(p.dq.dtype), "/", dtype_name(p.dk.dtype), "/",
            dtype_name(p.dv.dtype));
    require(p.q.numel() == 0 || p.lse != nullptr, "lse", "is null");
}

}  // namespace checks

void validate(const FwdParams& p) {
    checks::forward(p, Device::cpu);
    require(p.threads >= 0, "threads", "must be >= 0 (0 = all), got ", p.threads);
}

void validate(const BwdParams& p) {
    checks::backward(p, Device::cpu);
    require(p.threads >= 0, "threads", "must be >= 0 (0 = all), got ", p.threads);
}

void validate(const DecodeParams& p) {
    checks::view(p.q, "q", Device::cpu);
    const std::int64_t B = p.q.shape[0], T = p.q.shape[1], Hq = p.q.shape[2], D = p.q.shape[3];
    require(D >= 1 && D <= checks::kMaxHeadDim, "q.shape[3]", "head dim must be in [1, ", checks::kMaxHeadDim,
            "], got ", D);
    require(p.kv_heads >= 1, "kv_heads", "must be >= 1, got ", p.kv_heads);
    const std::int64_t hkv_q = p.q_kv_heads ? p.q_kv_heads : p.kv_heads;
    require(hkv_q >= 1 && Hq % hkv_q == 0, "q.shape[2]", "query heads (", Hq, ") must be a multiple of the kv heads (",
            hkv_q, ")");
    require(p.kv_head_offset >= 0 && p.kv_head_offset + hkv_q <= p.kv_heads, "kv_head_offset",
            "the queries' kv heads [", p.kv_head_offset, ", ", p.kv_head_offset + hkv_q, ") must lie in [0, ",
            p.kv_heads, ")");
    require(p.page_tokens >= 16 && p.page_tokens % 16 == 0, "page_tokens", "must be a positive multiple of 16, got ",
            p.page_tokens);
    require(B * T == 0 || p.q_pos != nullptr, "q_pos", "is null");
    require(p.page_begin != nullptr, "page_begin", "is null");
    require(p.page_begin[0] == 0, "page_begin[0]", "must be 0, got ", p.page_begin[0]);
    for (std::int64_t b = 0; b < B; ++b)
        require(p.page_begin[b + 1] >= p.page_begin[b], "page_begin", "must not decrease, entry ", b + 1);
    require(p.page_begin[B] == 0 || p.pages != nullptr, "pages", "is null");
    for (std::int64_t i = 0; i < p.page_begin[B]; ++i)
        require(p.pages[i].fill >= 0 && p.pages[i].fill <= p.page_tokens && (p.pages[i].fill == 0 || (p.pages[i].data && p.pages[i].pos)),
                "pages", "page ", i, " has fill ", p.pages[i].fill, " (at most page_tokens = ", p.page_tokens,
                ") or no data");
    require(p.pattern != nullptr, "pattern", "is null");
    const auto& slopes = p.pattern->spec().alibi_slopes;
    require(slopes.empty() || static_cast<std::int64_t>(slopes.size()) >= p.head_offset + Hq, "pattern.alibi_slopes",
            "needs one slope per query head (", p.head_offset + Hq, "), got ", slopes.size());
    require(B * T * Hq == 0 || (p.o != nullptr && p.lse != nullptr), "o/lse", "is null");
    require(p.threads >= 0, "threads", "must be >= 0 (0 = all), got ", p.threads);
}

}  // namespace longattn::kernels
