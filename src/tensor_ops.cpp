#include "longattn/tensor_ops.hpp"

#include <cstring>

#include "longattn/error.hpp"

namespace longattn {
namespace {

void check_same(const TensorView& a, const TensorView& b) {
    require(a.rank == b.rank, "tensor", "rank mismatch ", a.rank, " vs ", b.rank);
    for (int i = 0; i < a.rank; ++i)
        require(a.shape[i] == b.shape[i], "tensor", "shape mismatch in dim ", i, ": ", a.shape[i], " vs ", b.shape[i]);
}

// Calls f(src_offset, dst_offset, n) for every innermost run, threads over the outer dims.
template <class F>
void for_rows(const TensorView& a, const TensorView& b, F&& f) {
    std::array<std::int64_t, 4> s{1, 1, 1, 1};
    for (int i = 0; i < a.rank; ++i) s[static_cast<std::size_t>(4 - a.rank + i)] = a.shape[i];
    std::array<std::int64_t, 4> sa{0, 0, 0, 0}, sb{0, 0, 0, 0};
    for (int i = 0; i < a.rank; ++i) {
        sa[static_cast<std::size_t>(4 - a.rank + i)] = a.stride[i];
        sb[static_cast<std::size_t>(4 - a.rank + i)] = b.stride[i];
    }
    const bool unit = a.rank == 0 || (a.stride[a.rank - 1] == 1 && b.stride[b.rank - 1] == 1);
    // Waking the thread team costs tens of microseconds: small tensors are copied by the calling thread.
    const bool threaded = s[0] * s[1] * s[2] * s[3] >= (std::int64_t{1} << 16);
#pragma omp parallel for collapse(2) schedule(static) if (threaded)
    for (std::int64_t i = 0; i < s[0]; ++i)
        for (std::int64_t j = 0; j < s[1]; ++j)
            for (std::int64_t k = 0; k < s[2]; ++k) {
                const std::int64_t oa = i * sa[0] + j * sa[1] + k * sa[2], ob = i * sb[0] + j * sb[1] + k * sb[2];
                if (unit) {
                    f(oa, ob, s[3], std::int64_t{1}, std::int64_t{1});
                } else {
                    f(oa, ob, s[3], sa[3], sb[3]);
                }
            }
}

}  // namespace

TensorView slice(const TensorView& t, int dim, std::int64_t start, std::int64_t len) {
    require(dim >= 0 && dim < t.rank && start >= 0 && len >= 0 && start + len <= t.shape[dim], "tensor.slice",
            "range [", start, ", ", start + len, ") out of bounds for dim ", dim);
    TensorView v = t;
    if (v.data) v.data = static_cast<char*>(v.data) + start * t.stride[dim] * static_cast<std::int64_t>(dtype_size(t.dtype));
    v.shape[dim] = len;
    return v;
}

void copy(const TensorView& src, const TensorView& dst) {
    check_same(src, dst);
    if (src.numel() == 0) return;
    for_rows(src, dst, [&](std::int64_t oa, std::int64_t ob, std::int64_t n, std::int64_t ia, std::int64_t ib) {
        if (src.dtype == dst.dtype && ia == 1 && ib == 1) {
            const auto es = static_cast<std::int64_t>(dtype_size(src.dtype));
            std::memcpy(static_cast<char*>(dst.data) + ob * es, static_cast<const char*>(src.data) + oa * es,
                        static_cast<std::size_t>(n * es));
            return;
        }
        for (std::int64_t e = 0; e < n; ++e)
            store_from_f32(dst.data, dst.dtype, ob + e * ib, load_as_f32(src.data, src.dtype, oa + e * ia));
    });
}

void add_into(const TensorView& src, const TensorView& dst) {
    check_same(src, dst);
    require(dst.dtype == DType::f32, "tensor.add_into", "destination must be fp32");
    if (src.numel() == 0) return;
    for_rows(src, dst, [&](std::int64_t oa, std::int64_t ob, std::int64_t n, std::int64_t ia, std::int64_t ib) {
        float* d = static_cast<float*>(dst.data);
        if (src.dtype == DType::f32 && ia == 1 && ib == 1) {
            const float* s = static_cast<const float*>(src.data) + oa;
            for (std::int64_t e = 0; e < n; ++e) d[ob + e] += s[e];
            return;
        }
        for (std::int64_t e = 0; e < n; ++e) d[ob + e * ib] += load_as_f32(src.data, src.dtype, oa + e * ia);
    });
}

void fill(const TensorView& dst, float value) {
    if (dst.numel() == 0) return;
    for_rows(dst, dst, [&](std::int64_t, std::int64_t ob, std::int64_t n, std::int64_t, std::int64_t ib) {
        for (std::int64_t e = 0; e < n; ++e) store_from_f32(dst.data, dst.dtype, ob + e * ib, value);
    });
}

}  // namespace longattn
