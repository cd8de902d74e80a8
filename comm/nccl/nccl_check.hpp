#pragma once
// Error checks of the NCCL communicator: every failed call becomes an exception naming the call.
#include <mpi.h>
#include <nccl.h>

#include <stdexcept>
#include <string>

namespace longattn::comm {

// comm (optional) adds NCCL's own description of the last failure.
inline void nccl_check(ncclResult_t rc, const char* call, ncclComm_t comm = nullptr) {
    if (rc == ncclSuccess) return;
    std::string msg = std::string("NCCL ") + call + " failed: " + ncclGetErrorString(rc);
    const char* detail = comm != nullptr ? ncclGetLastError(comm) : nullptr;
    if (detail != nullptr && *detail != '\0') msg += std::string(" (") + detail + ")";
    throw std::runtime_error(msg);
}

inline void mpi_check(int rc, const char* call) {
    if (rc != MPI_SUCCESS) throw std::runtime_error(std::string("MPI ") + call + " failed in the NCCL communicator");
}

// Closes an NCCL group on every path, so an error while enqueueing leaves no group open.
class NcclGroup {
public:
    NcclGroup() { nccl_check(ncclGroupStart(), "ncclGroupStart"); }
    ~NcclGroup() {
        if (open_) (void)ncclGroupEnd();
    }
    NcclGroup(const NcclGroup&) = delete;
    NcclGroup& operator=(const NcclGroup&) = delete;
    void end() {
        open_ = false;
        nccl_check(ncclGroupEnd(), "ncclGroupEnd");
    }

private:
    bool open_ = true;
};

}  // namespace longattn::comm
