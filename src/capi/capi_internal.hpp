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
};

namespace la {

// Not in this build (LA_ERR_UNSUPPORTED).
class Unsupported : public longattn::Error {
public:
    using longattn::Error::Error;
};

// Runs f: LA_OK, or the status of what it threw with the message kept for la_last_error().
la_status guard(const std::function<void()>& f);
// The options checked (NULL: the defaults).
longattn::ContextOptions options_of(const la_options* opt);
// *out = a new context over comm.
la_status create(std::unique_ptr<longattn::comm::Communicator> comm, const longattn::ContextOptions& opt,
                 la_context** out);

}  // namespace la
