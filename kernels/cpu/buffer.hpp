#pragma once
// Aligned fp32 scratch of the CPU kernels. Large buffers are 2 MiB aligned and offered to transparent
// huge pages, which cuts the page faults of a fresh multi-megabyte buffer by a factor of 512; a
// buffer kept across calls (reserve) avoids them altogether.
#include <cstddef>
#include <new>

namespace longattn::kernels::cpu {

class Buffer {
public:
    Buffer() = default;
    explicit Buffer(std::size_t n) : n_(n) {
        if (!n) return;
        const std::size_t bytes = n * sizeof(float);
        align_ = bytes >= kHuge ? kHuge : 64;
        p_ = static_cast<float*>(::operator new(bytes, std::align_val_t{align_}));
    }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() { release(); }
    void release() {
        if (p_) ::operator delete(p_, std::align_val_t{align_});
        p_ = nullptr;
        n_ = 0;
    }
    // Grows to at least n floats; contents are not kept.
    float* reserve(std::size_t n) {
        if (n > n_) {
            release();
            new (this) Buffer(n);
        }
        return p_;
    }
    float* get() const { return p_; }
    std::size_t size() const { return n_; }

private:
    static constexpr std::size_t kHuge = std::size_t{2} << 20;
    float* p_ = nullptr;
    std::size_t n_ = 0;
    std::size_t align_ = 64;
};

// Keeps a per-thread buffer between calls unless it grew beyond `keep` floats.
struct TrimOnExit {
    Buffer& b;
    std::size_t keep;
    ~TrimOnExit() {
        if (b.size() > keep) b.release();
    }
};

}  // namespace longattn::kernels::cpu
