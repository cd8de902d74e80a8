/* Contexts over an NCCL communicator the caller already has (link longattn::nccl, or -llongattn_nccl;
 * builds with CUDA and NCCL only). The NCCL communicator is borrowed: it must outlive the context, and
 * the caller must not use it while a call of the context runs. comm, duplicated as in
 * la_context_create_mpi, carries the host-memory transfers and the agreement between ranks; it must
 * hold the same ranks in the same order as nccl (checked: a mismatch fails on every rank with
 * LA_ERR_ARGUMENT). The kernels and transfers run on the legacy default stream's order: work the
 * caller queued before a call is finished before the call reads its tensors. Collective over comm. */
#ifndef LONGATTN_NCCL_H
#define LONGATTN_NCCL_H

#include <nccl.h>

#include "longattn_mpi.h"

#ifdef __cplusplus
extern "C" {
#endif

la_status la_context_create_nccl(MPI_Comm comm, ncclComm_t nccl, const la_options* opt, la_context** out);

#ifdef __cplusplus
}
#endif
#endif /* LONGATTN_NCCL_H */
