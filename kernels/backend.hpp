#pragma once
// The kernel backend table: everything the strategies, the bench and the tests do to tensor memory,
// per device (the host, or a CUDA device in a build with CUDA), chosen by the tensor's device field.
// Nothing above kernels/ calls a CPU or CUDA kernel by name, so one strategy file serves both and a
// new device is one more table.
//
// The kernels (forward, backward, merge) return once their results can be read or sent: the CUDA
// entries synchronize the params' stream. The tensor operations (copy, add, fill) are queued in order
// on the default stream, which the communicators finish before they touch a buffer. A device this
// build lacks has a table whose entries throw longattn::Error naming "tensor.device" and how to
// configure a build with it.
#include <cstddef>

#include "kernels/attention.hpp"
#include "longattn/tensor.hpp"

namespace longattn::kernels {

struct Backend {
    const char* name;
    bool built;  // this build has the device's kernels
    // A device of this kind is visible to the process (the host always is).
    bool (*available)();

    void* (*alloc)(std::size_t bytes);  // 64-byte aligned on the host; nullptr for 0 bytes
    void (*free)(void* p);
    // Byte copies between host memory and this device's memory, either way (plain copies on the host).
    void (*memcpy)(void* dst, const void* src, std::size_t bytes);

    // dst = src (same shape, dtypes may differ); dst (fp32) += src; dst = value everywhere.
    void (*copy)(const TensorView& src, const TensorView& dst);
    void (*add)(const TensorView& src, const TensorView& dst);
    void (*fill)(const TensorView& dst, float value);

    // The block kernel contract of kernels/attention.hpp.
    void (*validate_fwd)(const FwdParams& p);
    void (*validate_bwd)(const BwdParams& p);
    void (*forward)(const FwdParams& p);
    void (*backward)(const BwdParams& p);
    void (*merge)(TensorView o_acc, float* lse_acc, TensorView o_new, const float* lse_new, int threads);
};

const Backend& backend(Device d);
inline const Backend& backend_of(const TensorView& t) { return backend(t.device); }

// The tensor operations on the views' device; source and destination must share it.
void copy_view(const TensorView& src, const TensorView& dst);
void add_view(const TensorView& src, const TensorView& dst);
inline void fill_view(const TensorView& dst, float value) { backend_of(dst).fill(dst, value); }

// A device copy of a host tensor view, owned: filled from the host on construction, copied back by
// to_host(). On the host device it is the host view itself. bytes: the view's extent in memory (0: a
// contiguous view's numel x dtype size; more for a view with padding between rows).
class DeviceCopy {
public:
    DeviceCopy() = default;
    DeviceCopy(Device d, const TensorView& host, std::size_t bytes = 0);
    ~DeviceCopy();
    DeviceCopy(DeviceCopy&& o) noexcept;
    DeviceCopy& operator=(DeviceCopy&& o) noexcept;
    DeviceCopy(const DeviceCopy&) = delete;
    DeviceCopy& operator=(const DeviceCopy&) = delete;

    const TensorView& view() const { return dev_; }
    void to_host() const;  // the host view = the device contents

private:
    TensorView host_, dev_;
    std::size_t bytes_ = 0;
};

}  // namespace longattn::kernels
