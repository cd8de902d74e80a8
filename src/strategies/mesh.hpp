#pragma once
// The mesh: the ranks of a communicator as the strategies group them. A ring, Ulysses or all-gather
// job uses the world as it is; a hybrid of degree u arranges it as a (world / u) x u grid: consecutive
// ranks form a Ulysses group (rows of the grid), and ranks with the same index in their groups form a
// ring (columns). World rank r sits at Ulysses rank r % u of group r / u, and ring rank r / u of ring
// r % u.
//
// Worked example, 6 ranks, u = 2: Ulysses groups {0, 1} {2, 3} {4, 5}; rings {0, 2, 4} {1, 3, 5}.
//
// Splitting is collective and costs a round of messages, so a mesh is built once, inside a Plan,
// never per call.
#include <memory>

#include "comm/communicator.hpp"

namespace longattn::dist {

struct Mesh {
    comm::Communicator& world;
    std::unique_ptr<comm::Communicator> ulysses, ring;  // hybrid only

    Mesh(comm::Communicator& world, int ulysses_degree);  // collective; degree 0: no groups
    bool grid() const { return ulysses != nullptr; }
    // Bytes this rank has sent through any of the mesh's communicators.
    std::uint64_t bytes_sent() const;
};

}  // namespace longattn::dist
