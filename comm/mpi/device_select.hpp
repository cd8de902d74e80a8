#pragma once
// One GPU per rank. Ranks on a node are numbered 0, 1, ... (the local rank) and take devices in
// turn, so a node running more ranks than it has GPUs shares them round-robin.
#include <mpi.h>

namespace longattn::comm {

// This process's rank among the ranks of comm on its node. The launcher's environment is asked first
// (OMPI_COMM_WORLD_LOCAL_RANK, MV2_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID, LOCAL_RANK), since it also
// holds for communicators that are not the whole job; without it, comm is split by shared memory,
// which is collective: then every rank of comm must call this.
int local_rank(MPI_Comm comm);

// Makes device local_rank(comm) % device count current (cudaSetDevice) and returns it. Throws
// longattn::Error when no device is visible.
int select_device(MPI_Comm comm);

}  // namespace longattn::comm
