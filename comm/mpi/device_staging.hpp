#pragma once
// How MpiCommunicator reaches device memory (builds with CUDA only). A CUDA-aware MPI is handed
// device pointers as they are; any other MPI gets a pinned host copy: filled from the device before
// a send, copied to the device when a receive completes. Pinned buffers are kept and reused, since
// allocating page-locked memory costs far more than the copy.
//
// Before MPI touches a device buffer (directly or through a staging copy), the work queued on the
// legacy default stream is finished; work on other streams must be complete when the buffer is handed
// over (the stream that wrote it synchronized).
#include <cstddef>
#include <vector>

namespace longattn::comm {

class DeviceStaging {
public:
    // Passes device pointers to MPI when it is CUDA-aware at run time, unless the environment sets
    // LONGATTN_MPI_STAGE_DEVICE=1 (to exercise staging on a CUDA-aware MPI).
    DeviceStaging();
    ~DeviceStaging();
    DeviceStaging(const DeviceStaging&) = delete;
    DeviceStaging& operator=(const DeviceStaging&) = delete;

    bool cuda_aware() const { return cuda_aware_; }

    // The buffer MPI should use in place of buf: buf itself for host memory or a CUDA-aware MPI, else
    // a pinned buffer holding a copy of buf when copy_in. Every borrow is paired with give_back.
    void* borrow(void* buf, std::size_t bytes, bool copy_in);
    // Ends a borrow; copy_out copies the pinned buffer back to buf first.
    void give_back(void* buf, void* mpi_buf, std::size_t bytes, bool copy_out);

    // Point-to-point transfers keep their borrow until the request (slot) completes.
    void* stage_send(int slot, const void* buf, std::size_t bytes);
    void* stage_recv(int slot, void* buf, std::size_t bytes);
    void complete(int slot);  // copies a staged receive to the device; no-op for an unstaged slot

private:
    struct Block {
        void* ptr = nullptr;
        std::size_t size = 0;
        bool busy = false;
    };
    struct Lease {
        void* buf = nullptr;      // the caller's buffer
        void* mpi_buf = nullptr;  // what MPI uses
        std::size_t bytes = 0;
        bool recv = false;
    };
    void* acquire(std::size_t bytes);
    void release(void* p);
    Lease& lease(int slot);

    bool cuda_aware_ = false;
    std::vector<Block> pool_;
    std::vector<Lease> leases_;
};

}  // namespace longattn::comm
