// la_context_create_nccl (longattn_nccl.h): a context over the caller's NCCL communicator.
#include "capi/longattn_nccl.h"

#include "capi/capi_internal.hpp"
#include "comm/nccl/nccl_communicator.hpp"

extern "C" {

la_status la_context_create_nccl(MPI_Comm comm, ncclComm_t nccl, const la_options* opt, la_context** out) {
    longattn::ContextOptions o;
    std::unique_ptr<longattn::comm::Communicator> c;
    const la_status st = la::guard([&] {
        o = la::options_of(opt);
        c = std::make_unique<longattn::comm::NcclCommunicator>(comm, nccl, nullptr, opt ? opt->timeout_s : 0.0);
    });
    if (st != LA_OK) return st;
    return la::create(std::move(c), o, opt, out);
}

}  // extern "C"
