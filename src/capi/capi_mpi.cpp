// la_context_create_mpi (longattn_mpi.h): a context over a duplicate of the caller's communicator.
#include "capi/longattn_mpi.h"

#include "capi/capi_internal.hpp"
#include "comm/mpi/mpi_communicator.hpp"

extern "C" {

la_status la_context_create_mpi(MPI_Comm comm, const la_options* opt, la_context** out) {
    longattn::ContextOptions o;
    std::unique_ptr<longattn::comm::Communicator> c;
    const la_status st = la::guard([&] {
        o = la::options_of(opt);
        c = std::make_unique<longattn::comm::MpiCommunicator>(comm, opt ? opt->timeout_s : 0.0);
    });
    if (st != LA_OK) return st;
    return la::create(std::move(c), o, opt, out);
}

la_status la_context_create_mpi_f(MPI_Fint comm, const la_options* opt, la_context** out) {
    return la_context_create_mpi(MPI_Comm_f2c(comm), opt, out);
}

}  // extern "C"
