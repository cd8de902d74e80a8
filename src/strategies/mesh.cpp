#include "strategies/mesh.hpp"

namespace longattn::dist {

Mesh::Mesh(comm::Communicator& w, int u) : world(w) {
    if (u <= 0) return;
    ulysses = world.split(world.rank() / u, world.rank());
    ring = world.split(world.rank() % u, world.rank());
}

std::uint64_t Mesh::bytes_sent() const {
    std::uint64_t b = world.bytes_sent();
    if (grid()) b += ulysses->bytes_sent() + ring->bytes_sent();
    return b;
}

}  // namespace longattn::dist
