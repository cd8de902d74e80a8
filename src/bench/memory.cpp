#include "bench/memory.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "comm/communicator.hpp"
#include "longattn/error.hpp"

namespace longattn::bench {
namespace {

// In the units of the K/M/G suffixes (powers of 1024).
std::string mb(double bytes) {
    char b[32];
    if (bytes >= 1073741824.0) std::snprintf(b, sizeof(b), "%.1f GiB", bytes / 1073741824.0);
    else std::snprintf(b, sizeof(b), "%.1f MiB", bytes / 1048576.0);
    return b;
}

// A number of bytes from a file of the cgroup file system ("max": no limit, -1).
double read_bytes(const std::string& path) {
    std::ifstream f(path);
    std::string v;
    if (!(f >> v) || v == "max") return -1;
    try {
        return std::stod(v);
    } catch (...) {
        return -1;
    }
}

// The cgroup's room: its limit less its usage, the tightest over the process's cgroup and its
// ancestors (v2), or the memory controller's (v1); -1 when there is no limit.
double cgroup_room() {
    std::ifstream f("/proc/self/cgroup");
    std::string line;
    double room = -1;
    auto take = [&](double limit, double used) {
        // v1 reports "no limit" as a huge number.
        if (limit < 0 || limit >= 1e18 || used < 0) return;
        const double r = std::max(0.0, limit - used);
        room = room < 0 ? r : std::min(room, r);
    };
    while (std::getline(f, line)) {
        const std::size_t a = line.find(':'), b = line.find(':', a + 1);
        if (a == std::string::npos || b == std::string::npos) continue;
        const std::string controllers = line.substr(a + 1, b - a - 1);
        std::string path = line.substr(b + 1);
        if (controllers.empty()) {  // v2
            for (;;) {
                const std::string dir = "/sys/fs/cgroup" + (path == "/" ? std::string() : path);
                take(read_bytes(dir + "/memory.max"), read_bytes(dir + "/memory.current"));
                if (path.empty() || path == "/") break;
                path = path.substr(0, std::max<std::size_t>(path.find_last_of('/'), 1));
            }
        } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
            const std::string dir = "/sys/fs/cgroup/memory" + (path == "/" ? std::string() : path);
            take(read_bytes(dir + "/memory.limit_in_bytes"), read_bytes(dir + "/memory.usage_in_bytes"));
        }
    }
    return room;
}

double mem_available() {
    std::ifstream f("/proc/meminfo");
    std::string key;
    double kb = 0;
    std::string unit;
    while (f >> key >> kb >> unit)
        if (key == "MemAvailable:") return kb * 1024.0;
    return -1;
}

// Shapes of one rank's tensors.
double tensors(const Job& job, std::int64_t S, bool grads) {
    const Shape& s = job.shape;
    const double es = static_cast<double>(dtype_size(s.dtype)), rows = double(s.batch) * double(S) * double(s.head_dim);
    double b = rows * (2.0 * double(s.heads) + 2.0 * double(s.kv_heads)) * es + double(s.batch * s.heads) * double(S) * 4;
    if (grads) b += rows * double(s.heads) * (es + 4) + 2 * rows * double(s.kv_heads) * 4;
    return b;
}

}  // namespace

std::string MemoryNeed::describe() const {
    std::string s = mb(total()) + " (tensors " + mb(shards) + ", positions and plan tables " + mb(tables) + ", working " +
                    mb(working) + ", kernels " + mb(kernel);
    return s.append(", check ").append(mb(check)).append(")");
}

MemoryNeed tensor_memory(const Job& job, std::int64_t N, std::int64_t S, int P) {
    const bool grads = job.sweep.mode != Mode::fwd;
    MemoryNeed m;
    m.shards = tensors(job, S, grads);
    // Positions: the layout's, the plan's copy, and every rank's positions in the plan's shard table
    // (twice for the hybrid: its Ulysses groups' and its ring's).
    const bool hybrid = job.exec.distributed && job.exec.dist.strategy == StrategyKind::hybrid;
    m.tables = P > 1 ? 16.0 * double(S) + 8.0 * double(N) * (hybrid ? 2 : 1) : 8.0 * double(S);
    // The check: the gathered LSE and row deltas of the whole sequence [B, H, N] (backward), one in
    // flight while gathered.
    const double rows = double(job.shape.batch * job.shape.heads) * double(N) * 4;
    if (job.checks.enabled && grads) m.check = P > 1 ? 3 * rows : rows;
    return m;
}

double node_available_bytes(std::string* from) {
    const double avail = mem_available(), room = cgroup_room();
    double b = avail;
    std::string why = "MemAvailable " + (avail < 0 ? std::string("unknown") : mb(avail));
    if (room >= 0 && (b < 0 || room < b)) {
        b = room;
        why = "the cgroup's limit less its usage, " + mb(room);
    }
    if (from) *from = why;
    return b;
}

void refuse_what_cannot_fit(const Job& job, comm::Communicator* comm, std::int64_t N, const MemoryNeed& mine) {
    const int P = comm ? comm->size() : 1;
    char host[64] = {};
    gethostname(host, sizeof(host) - 1);
    std::string from;
    const double avail = node_available_bytes(&from);
    // Every rank's needs and host, on every rank: each decides alike.
    struct Entry {
        double total, shards, tables, working, kernel, check, avail;
        char host[64], from[64];
    };
    Entry e{mine.total(), mine.shards, mine.tables, mine.working, mine.kernel, mine.check, avail, {}, {}};
    std::snprintf(e.host, sizeof(e.host), "%s", host);
    std::snprintf(e.from, sizeof(e.from), "%s", from.c_str());
    std::vector<Entry> all(static_cast<std::size_t>(P));
    if (comm) {
        std::vector<std::size_t> bytes(static_cast<std::size_t>(P), sizeof(Entry)), off(static_cast<std::size_t>(P));
        for (int r = 0; r < P; ++r) off[static_cast<std::size_t>(r)] = static_cast<std::size_t>(r) * sizeof(Entry);
        comm->all_gather_v(&e, all.data(), bytes.data(), off.data());
    } else {
        all[0] = e;
    }
    // The worst fraction over ranks: a node's ranks together against what it gives, a rank against the cap.
    double worst = 0;
    int worst_rank = 0;
    std::string why;
    const double cap = static_cast<double>(job.exec.max_memory);
    for (int r = 0; r < P; ++r) {
        const Entry& x = all[static_cast<std::size_t>(r)];
        double node = 0;
        int on_node = 0;
        for (const Entry& y : all)
            if (std::string(y.host) == x.host) node += y.total, ++on_node;
        const double f_node = x.avail > 0 ? node / x.avail : 0, f_cap = cap > 0 ? x.total / cap : 0;
        if (std::max(f_node, f_cap) <= worst) continue;
        worst = std::max(f_node, f_cap);
        worst_rank = r;
        if (f_cap >= f_node) why = "more than --max-memory " + mb(cap) + " per rank";
        else if (P == 1) why = std::string("more than this machine gives (") + x.from + ")";
        else if (on_node == 1) why = std::string("more than its node ") + x.host + " gives (" + x.from + ")";
        else
            why = "together with the other " + std::to_string(on_node - 1) + " ranks on " + x.host + " " + mb(node) +
                  ", more than the node gives (" + x.from + ")";
    }
    if (worst <= 1.0) return;
    const Entry& w = all[static_cast<std::size_t>(worst_rank)];
    MemoryNeed n;
    n.shards = w.shards, n.tables = w.tables, n.working = w.working, n.kernel = w.kernel, n.check = w.check;
    // Every part grows about linearly with the length: the length that fits scales by the fraction.
    const auto fits = static_cast<long long>(std::floor(double(N) / worst / 1024.0) * 1024.0);
    std::ostringstream os;
    os << "memory: " << N << " tokens on " << P << (P == 1 ? " process" : " ranks") << " do not fit: rank " << worst_rank
       << " needs " << n.describe() << ", " << why << "; about " << fits
       << " tokens would fit (refused before allocating anything)";
    throw AgreedError(os.str());
}

}  // namespace longattn::bench
