/* Contexts over an MPI communicator (link longattn::mpi, or -llongattn_mpi): longattn duplicates the
 * communicator handed in, so its traffic never mixes with the caller's; MPI must be initialized (with
 * MPI_THREAD_MULTIPLE when opt->timeout_s > 0, for the watchdog's thread) and stay so until the
 * context is destroyed. Collective over comm. */
#ifndef LONGATTN_MPI_H
#define LONGATTN_MPI_H

#include <mpi.h>

#include "longattn.h"

#ifdef __cplusplus
extern "C" {
#endif

la_status la_context_create_mpi(MPI_Comm comm, const la_options* opt, la_context** out);
/* The same from Fortran's handle of the communicator (MPI_Comm_c2f). */
la_status la_context_create_mpi_f(MPI_Fint comm, const la_options* opt, la_context** out);

#ifdef __cplusplus
}
#endif
#endif /* LONGATTN_MPI_H */
