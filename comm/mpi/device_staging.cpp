#include "comm/mpi/device_staging.hpp"

#include <mpi.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "comm/device_memory.hpp"

// Open MPI declares its run-time CUDA query in mpi-ext.h; other MPIs are treated as not CUDA-aware.
#if defined(OPEN_MPI) && __has_include(<mpi-ext.h>)
#include <mpi-ext.h>
#endif

namespace longattn::comm {
namespace {

bool mpi_is_cuda_aware() {
    const char* force = std::getenv("LONGATTN_MPI_STAGE_DEVICE");
    if (force != nullptr && std::strcmp(force, "1") == 0) return false;
#if defined(OMPI_HAVE_MPI_EXT_CUDA) && OMPI_HAVE_MPI_EXT_CUDA
    // The compile-time MPIX_CUDA_AWARE_SUPPORT describes the headers; the library loaded at run time
    // (and its settings) decides.
    return MPIX_Query_cuda_support() == 1;
#else
    return false;
#endif
}

// Pinned buffers come in powers of two from 64 KiB, so transfers of similar sizes share them.
std::size_t block_size(std::size_t bytes) {
    std::size_t s = std::size_t{1} << 16;
    while (s < bytes) s <<= 1;
    return s;
}

}  // namespace

DeviceStaging::DeviceStaging() : cuda_aware_(mpi_is_cuda_aware()) {}

DeviceStaging::~DeviceStaging() {
    for (Block& b : pool_) (void)cudaFreeHost(b.ptr);  // nothing to report from a destructor
}

void* DeviceStaging::acquire(std::size_t bytes) {
    Block* best = nullptr;
    for (Block& b : pool_)
        if (!b.busy && b.size >= bytes && (best == nullptr || b.size < best->size)) best = &b;
    if (best == nullptr) {
        Block b;
        b.size = block_size(bytes);
        cuda_check(cudaMallocHost(&b.ptr, b.size), "cudaMallocHost");
        pool_.push_back(b);
        best = &pool_.back();
    }
    best->busy = true;
    return best->ptr;
}

void DeviceStaging::release(void* p) {
    for (Block& b : pool_)
        if (b.ptr == p) {
            b.busy = false;
            return;
        }
}

void* DeviceStaging::borrow(void* buf, std::size_t bytes, bool copy_in) {
    if (bytes == 0 || !is_device_memory(buf)) return buf;
    if (cuda_aware_) {
        // A CUDA-aware MPI reads and writes device memory on streams of its own: the work queued on the
        // default stream that fills (or still reads) this buffer finishes first.
        cuda_check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
        return buf;
    }
    void* host = acquire(bytes);
    if (copy_in) copy_bytes(host, buf, bytes);
    return host;
}

void DeviceStaging::give_back(void* buf, void* mpi_buf, std::size_t bytes, bool copy_out) {
    if (mpi_buf == buf) return;
    if (copy_out) copy_bytes(buf, mpi_buf, bytes);
    release(mpi_buf);
}

DeviceStaging::Lease& DeviceStaging::lease(int slot) {
    const auto i = static_cast<std::size_t>(slot);
    if (i >= leases_.size()) leases_.resize(i + 1);
    return leases_[i];
}

void* DeviceStaging::stage_send(int slot, const void* buf, std::size_t bytes) {
    // MPI only reads a send buffer; the cast lets one lease type serve both directions.
    void* b = const_cast<void*>(buf);
    Lease& l = lease(slot);
    l = Lease{b, borrow(b, bytes, true), bytes, false};
    return l.mpi_buf;
}

void* DeviceStaging::stage_recv(int slot, void* buf, std::size_t bytes) {
    Lease& l = lease(slot);
    l = Lease{buf, borrow(buf, bytes, false), bytes, true};
    return l.mpi_buf;
}

void DeviceStaging::complete(int slot) {
    Lease& l = lease(slot);
    if (l.buf != nullptr) give_back(l.buf, l.mpi_buf, l.bytes, l.recv);
    l = Lease{};
}

}  // namespace longattn::comm
