#pragma once
// What the C interface's translation units share (capi.cpp, capi_mpi.cpp): the context behind the
// opaque handle, and the guard that turns exceptions into status codes and the thread's message.
#include <functional>
#include <memory>
#include <string>

#include "capi/longattn.h"
#include "comm/communicator.hpp"
#include "longattn/context.hpp"
#include "longattn/error.hpp"

struct la_context {
    std::unique_ptr<longattn::comm::Communicator> comm;
    std::unique_ptr<longattn::Context> ctx;  // over *comm
    bool needs_cluster = false;              // LA_AUTO before la_context_set_cluster
};

namespace la {

// Not in this build (LA_ERR_UNSUPPORTED).
class Unsupported : public longattn::Error {
public:
    using longattn::Error::Error;
};

// Runs f: LA_OK, or the status of what it threw with the message kept for la_last_error().
la_status guard(const std::function<void()>& f);
// The options checked (NULL: the defaults; LA_AUTO: the ring until la_context_set_cluster).
longattn::ContextOptions options_of(const la_options* opt);
// *out = a new context over comm (with opt's strategy LA_AUTO: waiting for its cluster).
la_status create(std::unique_ptr<longattn::comm::Communicator> comm, const longattn::ContextOptions& o,
                 const la_options* opt, la_context** out);

}  // namespace la
