// Host side of the CUDA flash kernels: checks, the tile plan, one upload of everything the kernels read
// from the host (plan, ALiBi slopes and positions) into one stream-ordered buffer, and the launches.
// Nothing here waits for the device; the buffer is freed in stream order after the kernels.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/flash_cuda.hpp"
#include "kernels/cuda/kernel_args.hpp"
#include "kernels/cuda/tile_plan.hpp"
#include "longattn/error.hpp"

namespace longattn::kernels {
namespace {

using cuda::cuda_check;

constexpr float kLog2e = 1.4426950408889634f;

// Host bytes laid out as the device buffer will be: every section 16-byte aligned.
class Blob {
public:
    template <class T>
    std::size_t add(const T* data, std::size_t n) {
        const std::size_t off = align(bytes_.size());
        bytes_.resize(off + n * sizeof(T));
        if (n > 0) std::memcpy(bytes_.data() + off, data, n * sizeof(T));
        return off;
    }
    template <class T>
    std::size_t add(const std::vector<T>& v) {
        return add(v.data(), v.size());
    }
    // Space the device fills itself: it follows the uploaded bytes.
    std::size_t scratch(std::size_t n) {
        const std::size_t off = align(bytes_.size() + scratch_);
        scratch_ = off + n - bytes_.size();
        return off;
    }
    std::size_t uploaded() const { return bytes_.size(); }
    std::size_t total() const { return bytes_.size() + scratch_; }
    std::vector<std::byte> take() { return std::move(bytes_); }

private:
    static std::size_t align(std::size_t n) { return (n + 15) / 16 * 16; }
    std::vector<std::byte> bytes_;
    std::size_t scratch_ = 0;
};

template <class T>
T* at(const DeviceBuffer& buf, std::size_t off) {
    return reinterpret_cast<T*>(static_cast<char*>(buf.get()) + off);
}

// Offsets of one plan side inside the blob.
struct PlanOffsets {
    std::size_t seg_ptr = 0, segs = 0, order = 0;
};

PlanOffsets add_side(Blob& blob, const cuda::TileIndex& idx) {
    PlanOffsets o;
    o.seg_ptr = blob.add(idx.seg_ptr);
    o.segs = blob.add(idx.segs);
    o.order = blob.add(idx.order);
    return o;
}

cuda::DevPlan dev_plan(const DeviceBuffer& buf, const PlanOffsets& o, std::size_t masks, std::size_t ones) {
    cuda::DevPlan p;
    p.seg_ptr = at<const std::int32_t>(buf, o.seg_ptr);
    p.segs = at<const cuda::Segment>(buf, o.segs);
    p.order = at<const std::int32_t>(buf, o.order);
    p.masks = at<const std::uint64_t>(buf, masks);
    p.all_ones = at<const std::uint64_t>(buf, ones);
    return p;
}

cuda::DevTensor dev_tensor(const TensorView& t) {
    cuda::DevTensor d;
    d.data = t.data;
    d.sb = t.stride[0];
    d.ss = t.stride[1];
    d.sh = t.stride[2];
    const auto addr = reinterpret_cast<std::uintptr_t>(t.data);
    d.vec = dtype_size(t.dtype) == 2 && addr % 16 == 0 && t.shape[3] % 8 == 0 && t.stride[0] % 8 == 0 &&
            t.stride[1] % 8 == 0 && t.stride[2] % 8 == 0;
    return d;
}

cuda::OutType out_type(DType t) {
    return t == DType::f32 ? cuda::OutType::f32 : t == DType::bf16 ? cuda::OutType::bf16 : cuda::OutType::f16;
}

cuda::Elem elem(DType t) { return t == DType::bf16 ? cuda::Elem::bf16 : cuda::Elem::f16; }

int tiling_dim(std::int64_t d) { return d <= 64 ? 64 : d <= 128 ? 128 : 256; }

// Memory the kernels must be able to address from the current device.
void require_device_memory(const void* p, const char* field) {
    if (p == nullptr) return;
    cudaPointerAttributes at{};
    const cudaError_t e = cudaPointerGetAttributes(&at, p);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        require(false, field, "is not memory the CUDA runtime knows: ", cudaGetErrorString(e));
    }
    require(at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged, field,
            "must be device (or managed) memory for the CUDA kernels, got host memory");
    int dev = 0;
    cuda_check(cudaGetDevice(&dev), "cudaGetDevice");
    require(at.type == cudaMemoryTypeManaged || at.device == dev, field, "lives on device ", at.device,
            " but the current device is ", dev);
}

// Two K/V slots when the device allows the shared memory, else one.
int pick_stages(int two, int one, const char* kernel, std::int64_t head_dim) {
    int dev = 0, optin = 0;
    cuda_check(cudaGetDevice(&dev), "cudaGetDevice");
    cuda_check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
    if (two <= optin) return 2;
    require(one <= optin, "q.shape[3]", "head dim ", head_dim, " needs ", one, " bytes of shared memory per block in the ",
            kernel, " kernel; this device allows ", optin);
    return 1;
}

// Score modifiers and the ALiBi inputs the kernels read from device memory.
struct ModOffsets {
    std::size_t slopes = 0, q_pos = 0, k_pos = 0;
    bool alibi = false;
};

ModOffsets add_mod(Blob& blob, const Pattern& pat, std::int64_t head_offset, std::int64_t hq, const std::int64_t* q_pos,
                   std::int64_t sq, const std::int64_t* k_pos, std::int64_t sk) {
    ModOffsets m;
    if (!pat.has_alibi()) return m;
    std::vector<float> slopes(static_cast<std::size_t>(hq));
    for (std::int64_t h = 0; h < hq; ++h) slopes[static_cast<std::size_t>(h)] = pat.alibi_slope(head_offset + h);
    m.alibi = true;
    m.slopes = blob.add(slopes);
    m.q_pos = blob.add(q_pos, static_cast<std::size_t>(sq));
    m.k_pos = blob.add(k_pos, static_cast<std::size_t>(sk));
    return m;
}

cuda::ScoreMod score_mod(const Pattern& pat, std::int64_t d, const DeviceBuffer& buf, const ModOffsets& m) {
    cuda::ScoreMod s;
    s.scale = pat.softmax_scale(d);
    s.softcap = pat.has_softcap() ? pat.spec().softcap : 0.0f;
    s.inv_softcap = s.softcap > 0.0f ? 1.0f / s.softcap : 0.0f;
    s.general = pat.has_softcap() || pat.has_alibi();
    s.unit = s.general ? 1.0f : s.scale;
    s.unit_log2 = s.unit * kLog2e;
    if (m.alibi) {
        s.slopes = at<const float>(buf, m.slopes);
        s.q_pos = at<const std::int64_t>(buf, m.q_pos);
        s.k_pos = at<const std::int64_t>(buf, m.k_pos);
    }
    return s;
}

}  // namespace

void flash_forward_cuda(const FwdParams& p) {
    validate_cuda(p);
    const std::int64_t B = p.q.shape[0], Sq = p.q.shape[1], Hq = p.q.shape[2], D = p.q.shape[3];
    const std::int64_t Sk = p.k.shape[1], Hkv = p.k.shape[2];
    if (B == 0 || Sq == 0 || Hq == 0) return;
    if (p.accumulate && Sk == 0) return;  // nothing to merge in
    for (const auto& [ptr, name] : {std::pair<const void*, const char*>{p.q.data, "q.data"}, {p.k.data, "k.data"},
                                    {p.v.data, "v.data"}, {p.o.data, "o.data"}, {p.lse, "lse"}})
        require_device_memory(ptr, name);

    const int dp = tiling_dim(D);
    const cuda::TilePlan plan = cuda::plan_tiles(*p.pattern, p.q_pos, Sq, p.k_pos, Sk, cuda::forward_rows(dp), false);
    Blob blob;
    const PlanOffsets side = add_side(blob, plan.by_query);
    const std::size_t masks = blob.add(plan.masks);
    const ModOffsets mod = add_mod(blob, *p.pattern, p.head_offset, Hq, p.q_pos, Sq, p.k_pos, Sk);

    const int stages = pick_stages(cuda::forward_smem(dp, 2), cuda::forward_smem(dp, 1), "forward", D);
    DeviceBuffer buf(blob.total(), p.stream);
    cuda::FwdArgs a;
    a.q = dev_tensor(p.q);
    a.k = dev_tensor(p.k);
    a.v = dev_tensor(p.v);
    a.o = dev_tensor(p.o);
    a.o_type = out_type(p.o.dtype);
    a.lse = p.lse;
    a.lse_lo = p.lse_lo;
    a.B = static_cast<int>(B);
    a.Sq = static_cast<int>(Sq);
    a.Sk = static_cast<int>(Sk);
    a.Hq = static_cast<int>(Hq);
    a.Hkv = static_cast<int>(Hkv);
    a.D = static_cast<int>(D);
    a.accumulate = p.accumulate ? 1 : 0;
    a.stages = stages;
    a.mod = score_mod(*p.pattern, D, buf, mod);
    a.plan = dev_plan(buf, side, masks, masks);  // the forward never copies a FULL tile's mask
    buf.upload(blob.take());
    const auto grid = static_cast<unsigned>(plan.q_tiles * B * Hq);
    cuda::launch_forward(dp, elem(p.q.dtype), a, grid, cuda::forward_smem(dp, stages), p.stream);
}

void flash_backward_cuda(const BwdParams& p) {
    validate_cuda(p);
    const std::int64_t B = p.q.shape[0], Sq = p.q.shape[1], Hq = p.q.shape[2], D = p.q.shape[3];
    const std::int64_t Sk = p.k.shape[1], Hkv = p.k.shape[2];
    if (B == 0 || (Sk == 0 && (Sq == 0 || Hq == 0))) return;
    for (const auto& [ptr, name] :
         {std::pair<const void*, const char*>{p.q.data, "q.data"}, {p.k.data, "k.data"}, {p.v.data, "v.data"},
          {p.o.data, "o.data"}, {p.dout.data, "dout.data"}, {p.lse, "lse"}, {p.dq.data, "dq.data"},
          {p.dk.data, "dk.data"}, {p.dv.data, "dv.data"}})
        require_device_memory(ptr, name);

    const int dp = tiling_dim(D);
    // No query rows: the dK/dV kernel still runs over the key tiles (each with no work) to write zeros.
    const std::int64_t rows_q = Hq == 0 ? 0 : Sq;
    const cuda::TilePlan plan = cuda::plan_tiles(*p.pattern, p.q_pos, rows_q, p.k_pos, Sk, cuda::kBwdRows, true);
    Blob blob;
    const PlanOffsets by_q = add_side(blob, plan.by_query);
    const PlanOffsets by_k = add_side(blob, plan.by_key);
    const std::size_t masks = blob.add(plan.masks);
    const std::vector<std::uint64_t> ones(static_cast<std::size_t>(cuda::kBwdRows), ~std::uint64_t{0});
    const std::size_t all_ones = blob.add(ones);
    const ModOffsets mod = add_mod(blob, *p.pattern, p.head_offset, Hq, p.q_pos, Sq, p.k_pos, Sk);
    const auto row_count = static_cast<std::size_t>(B * Hq * Sq);
    const std::size_t lse_row = blob.scratch(row_count * sizeof(float));
    const std::size_t delta = blob.scratch(row_count * sizeof(float));

    const int dq_stages = pick_stages(cuda::bwd_dq_smem(dp, 2), cuda::bwd_dq_smem(dp, 1), "backward dQ", D);
    const int kv_stages = pick_stages(cuda::bwd_dkdv_smem(dp, 2), cuda::bwd_dkdv_smem(dp, 1), "backward dK/dV", D);
    DeviceBuffer buf(blob.total(), p.stream);

    cuda::BwdArgs a;
    a.q = dev_tensor(p.q);
    a.k = dev_tensor(p.k);
    a.v = dev_tensor(p.v);
    a.dout = dev_tensor(p.dout);
    a.dq = dev_tensor(p.dq);
    a.dk = dev_tensor(p.dk);
    a.dv = dev_tensor(p.dv);
    a.lse_row = at<const float>(buf, lse_row);
    a.delta = at<const float>(buf, delta);
    a.B = static_cast<int>(B);
    a.Sq = static_cast<int>(rows_q);
    a.Sk = static_cast<int>(Sk);
    a.Hq = static_cast<int>(Hq);
    a.Hkv = static_cast<int>(Hkv);
    a.D = static_cast<int>(D);
    a.accumulate = p.accumulate ? 1 : 0;
    a.mod = score_mod(*p.pattern, D, buf, mod);

    cuda::PrepArgs prep;
    prep.o = dev_tensor(p.o);
    prep.dout = dev_tensor(p.dout);
    prep.o_type = out_type(p.o.dtype);
    prep.dout_type = out_type(p.dout.dtype);
    prep.lse = p.lse;
    prep.lse_row = at<float>(buf, lse_row);
    prep.delta = at<float>(buf, delta);
    prep.B = static_cast<int>(B);
    prep.Sq = static_cast<int>(rows_q);
    prep.Hq = static_cast<int>(Hq);
    prep.D = static_cast<int>(D);

    buf.upload(blob.take());
    cuda::launch_bwd_prep(prep, p.stream);
    const int chunks = cuda::bwd_chunks(dp);
    if (plan.q_tiles > 0 && Hq > 0) {
        a.stages = dq_stages;
        a.plan = dev_plan(buf, by_q, masks, all_ones);
        const auto grid = static_cast<unsigned>(plan.q_tiles * B * Hq * chunks);
        cuda::launch_bwd_dq(dp, elem(p.q.dtype), a, grid, cuda::bwd_dq_smem(dp, dq_stages), p.stream);
    }
    if (plan.k_tiles > 0) {
        a.stages = kv_stages;
        a.plan = dev_plan(buf, by_k, masks, all_ones);
        const auto grid = static_cast<unsigned>(plan.k_tiles * B * Hkv * chunks);
        cuda::launch_bwd_dkdv(dp, elem(p.q.dtype), a, grid, cuda::bwd_dkdv_smem(dp, kv_stages), p.stream);
    }
}

void merge_partial_cuda(TensorView o_acc, float* lse_acc, TensorView o_new, const float* lse_new, void* stream) {
    require(o_acc.rank == 4 && o_new.rank == 4, "merge_partial", "o_acc and o_new must be rank-4 views [B, S, H, D]");
    require(o_acc.device == Device::cuda && o_new.device == Device::cuda, "merge_partial.device",
            "o_acc and o_new must be CUDA tensors");
    require(o_acc.dtype == DType::f32, "merge_partial.o_acc", "must be fp32, got ", dtype_name(o_acc.dtype));
    for (int i = 0; i < 4; ++i) {
        require(o_new.shape[i] == o_acc.shape[i], "merge_partial.o_new", "shape[", i, "] must equal o_acc's ",
                o_acc.shape[i], ", got ", o_new.shape[i]);
        require(o_acc.shape[i] >= 0 && o_acc.shape[i] <= std::numeric_limits<std::int32_t>::max(), "merge_partial.o_acc",
                "shape[", i, "] must be in [0, 2^31), got ", o_acc.shape[i]);
    }
    const std::int64_t B = o_acc.shape[0], S = o_acc.shape[1], H = o_acc.shape[2], D = o_acc.shape[3];
    require(D <= 1 || (o_acc.stride[3] == 1 && o_new.stride[3] == 1), "merge_partial.stride[3]",
            "the head dimension must be contiguous (stride 1)");
    if (B * S * H == 0) return;
    require(lse_acc != nullptr && lse_new != nullptr, "merge_partial.lse", "is null");
    require(D == 0 || (o_acc.data != nullptr && o_new.data != nullptr), "merge_partial.o", "is null");
    cuda::launch_merge(dev_tensor(o_acc), lse_acc, dev_tensor(o_new), out_type(o_new.dtype), lse_new, static_cast<int>(B),
                       static_cast<int>(S), static_cast<int>(H), static_cast<int>(D), stream);
}

}  // namespace longattn::kernels
