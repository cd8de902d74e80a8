#pragma once
// --save: every rank writes its rows into shared .npy files in global token order, whatever the
// layout, in the job's staging directory (bench/outputs.hpp publishes it with the other outputs).
#include <cstdint>

#include "bench/check.hpp"
#include "bench/outputs.hpp"

namespace longattn::comm {
class Communicator;
}

namespace longattn::bench {

// out.npy [N, H, D], lse.npy [H, N]; with gradients also dq.npy [N, H, D], dk.npy and dv.npy
// [N, Hkv, D]; all float32. comm is null in a single process. Collective.
void save_outputs(const Job& job, std::int64_t N, const RankRows& r, comm::Communicator* comm, OutputSet& out);

}  // namespace longattn::bench
