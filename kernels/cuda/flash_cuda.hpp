#pragma once
// The CUDA flash kernels behind the block kernel contract (kernels/attention.hpp). Tensor views are
// device memory (TensorView::device == Device::cuda), as are FwdParams::lse and BwdParams::lse; the
// positions and the Pattern stay on the host, where every call plans its tiles (tile_plan.hpp) and
// uploads the plan with its inputs. Work is queued on the params' stream and the calls return without
// waiting for it. Includes no CUDA header.
//
// Storage: q, k, v (and dout) bf16 or fp16, all the same; o the same or fp32 (fp32 to accumulate);
// gradients fp32. Head dims 64 and 128 have their own tilings; any other up to 256 runs on the tiling
// of the next of 64, 128, 256 with the missing dims zero-filled in shared memory.
#include <cstddef>
#include <vector>

#include "kernels/attention.hpp"

namespace longattn::kernels {

// Throw longattn::Error naming the field and its allowed values.
void validate_cuda(const FwdParams& p);
void validate_cuda(const BwdParams& p);

void flash_forward_cuda(const FwdParams& p);
// Deterministic: the same bits on every rerun (no atomics; every sum has a fixed order).
void flash_backward_cuda(const BwdParams& p);

// merge_partial on the device: o_acc fp32, o_new fp32, bf16 or fp16, lse arrays [B, H, S] fp32, all
// device memory; queued on `stream` (a cudaStream_t, nullptr for the default stream).
void merge_partial_cuda(TensorView o_acc, float* lse_acc, TensorView o_new, const float* lse_new, void* stream);

// A CUDA device is visible to this process (the runtime initializes and counts at least one).
bool cuda_device_available();

// Device memory owned for the lifetime of the object, allocated and freed in order on a stream (the
// memory is usable by work queued on that stream after the constructor returns).
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    DeviceBuffer(std::size_t bytes, void* stream = nullptr);
    ~DeviceBuffer();
    DeviceBuffer(DeviceBuffer&& o) noexcept;
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    void* get() const { return ptr_; }
    std::size_t size() const { return bytes_; }
    // Copies between this buffer and host memory, ordered on the buffer's stream. upload() reads `host`
    // when the stream gets to the copy, so it must stay valid until then (the owning overload keeps the
    // bytes alive itself); download() returns once `host` holds the data.
    void upload(const void* host, std::size_t bytes, std::size_t offset = 0);
    void upload(std::vector<std::byte> host, std::size_t offset = 0);
    void download(void* host, std::size_t bytes, std::size_t offset = 0) const;

private:
    void release() noexcept;
    void* ptr_ = nullptr;
    std::size_t bytes_ = 0;
    void* stream_ = nullptr;
    bool pooled_ = false;  // from the stream-ordered allocator (freed on the stream) or cudaMalloc
};

}  // namespace longattn::kernels
