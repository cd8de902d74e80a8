#pragma once
// --save: every rank writes its rows into shared .npy files in global token order, whatever the
// layout; one rank creates the files under temporary names and renames them once all ranks are done.
#include <cstdint>

#include "bench/check.hpp"

namespace longattn::comm {
class Communicator;
}

namespace longattn::bench {

// out.npy [N, H, D], lse.npy [H, N]; with gradients also dq.npy [N, H, D], dk.npy and dv.npy
// [N, Hkv, D]; all float32. comm is null in a single process.
void save_outputs(const Job& job, std::int64_t N, const RankRows& r, comm::Communicator* comm);

}  // namespace longattn::bench
