#include "comm/mpi/device_select.hpp"

#include <cuda_runtime_api.h>

#include <cerrno>
#include <cstdlib>
#include <stdexcept>

#include "comm/device_memory.hpp"
#include "longattn/error.hpp"

namespace longattn::comm {
namespace {

// The value of the first launcher variable that is set, or -1.
int local_rank_from_env() {
    for (const char* name :
         {"OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK"}) {
        const char* v = std::getenv(name);
        if (v == nullptr || *v == '\0') continue;
        char* end = nullptr;
        errno = 0;
        const long r = std::strtol(v, &end, 10);
        require(errno == 0 && *end == '\0' && r >= 0 && r <= 1 << 20, name,
                "must be a non-negative integer (the launcher's local rank), got '", v, "'");
        return static_cast<int>(r);
    }
    return -1;
}

}  // namespace

int local_rank(MPI_Comm comm) {
    const int from_env = local_rank_from_env();
    if (from_env >= 0) return from_env;
    MPI_Comm node = MPI_COMM_NULL;
    int rank = 0;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS ||
        MPI_Comm_rank(node, &rank) != MPI_SUCCESS)
        throw std::runtime_error("MPI Comm_split_type(MPI_COMM_TYPE_SHARED) failed while finding the local rank");
    MPI_Comm_free(&node);
    return rank;
}

int select_device(MPI_Comm comm) {
    const int local = local_rank(comm);
    const int count = cuda_device_count();
    int world = 0;
    MPI_Comm_rank(comm, &world);
    require(count > 0, "device", "no CUDA device is visible to rank ", world,
            " (check CUDA_VISIBLE_DEVICES and the driver); --device cuda needs one GPU per rank");
    const int device = local % count;
    cuda_check(cudaSetDevice(device), "cudaSetDevice");
    return device;
}

}  // namespace longattn::comm
