#pragma once
// The executor: runs a plan's strategy on one call's tensors (one file per strategy: ring.cpp,
// ulysses.cpp, allgather.cpp; the hybrid is Ulysses over the mesh's rows with a ring inside).
#include <functional>

#include "comm/communicator.hpp"
#include "longattn/distributed.hpp"
#include "strategies/plan.hpp"

namespace longattn::dist {

// Checks the call against the plan on every rank, then runs the plan's strategy; fills stats.
void execute_forward(PlanState& s, const DistForwardArgs& args, DistStats* stats);
void execute_backward(PlanState& s, const DistBackwardArgs& args, DistStats* stats);

// Runs check on this rank's input, then agrees with every rank of comm: a rank whose input is refused
// throws its own error, and so does every other rank (naming it), so that none waits for it in a
// transfer. Collective.
void agree_on_input(comm::Communicator& comm, const std::function<void()>& check);

}  // namespace longattn::dist
