// The public entry points: validate once, pick the strategy, keep the statistics.
#include <chrono>

#include "longattn/distributed.hpp"
#include "longattn/error.hpp"
#include "strategies/common.hpp"

namespace longattn {

StrategyKind parse_strategy(const std::string& name) {
    if (name == "ring") return StrategyKind::ring;
    if (name == "ulysses") return StrategyKind::ulysses;
    if (name == "hybrid") return StrategyKind::hybrid;
    if (name == "allgather") return StrategyKind::allgather;
    require(false, "strategy", "must be ring, ulysses, hybrid or allgather, got '", name, "'");
    return StrategyKind::ring;
}

const char* strategy_name(StrategyKind k) {
    switch (k) {
        case StrategyKind::ring: return "ring";
        case StrategyKind::ulysses: return "ulysses";
        case StrategyKind::hybrid: return "hybrid";
        default: return "allgather";
    }
}

namespace {

// Shapes other than the sequence length must agree on every rank; every rank reaches the same verdict,
// so a mismatch is an error everywhere instead of a hang.
void check_consistent(comm::Communicator& comm, const DistOptions& opt, const TensorView& q, const TensorView& k) {
    double v[10] = {double(q.shape[0]), double(q.shape[2]), double(k.shape[2]), double(q.shape[3]),
                    double(opt.strategy == StrategyKind::hybrid ? opt.ulysses_degree : 0)};
    for (int i = 0; i < 5; ++i) v[5 + i] = -v[i];
    comm.all_reduce_max(v, 10);
    const char* names[5] = {"q.shape[0] (batch)", "q.shape[2] (heads)", "k.shape[2] (kv heads)", "q.shape[3] (head dim)",
                            "ulysses_degree"};
    for (int i = 0; i < 5; ++i)
        require(v[i] == -v[5 + i], names[i], "must be the same on every rank; ranks differ (", -v[5 + i], " .. ", v[i], ")");
    require(opt.progress_chunks >= 1, "progress_chunks", "must be >= 1, got ", opt.progress_chunks);
    require(opt.kv_head_chunk >= 0, "kv_head_chunk", "must be >= 0 (0 = all), got ", opt.kv_head_chunk);
    if (opt.strategy == StrategyKind::hybrid)
        require(opt.ulysses_degree >= 1 && comm.size() % opt.ulysses_degree == 0, "ulysses_degree",
                "must divide the number of ranks (", comm.size(), "), got ", opt.ulysses_degree);
}

struct Groups {
    std::unique_ptr<comm::Communicator> ulysses, ring;
};

// Hybrid: consecutive ranks form a Ulysses group; ranks with the same index in their groups a ring.
Groups hybrid_groups(comm::Communicator& comm, int u) {
    Groups g;
    g.ulysses = comm.split(comm.rank() / u, comm.rank());
    g.ring = comm.split(comm.rank() % u, comm.rank());
    return g;
}

template <class F>
void with_stats(comm::Communicator& comm, DistStats* stats, const DistOptions& opt, Device device, F&& f) {
    DistStats local;
    dist::Ctx cx{opt, local, device};
    const auto t0 = std::chrono::steady_clock::now();
    const std::uint64_t b0 = comm.bytes_sent();
    f(cx);
    local.total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    local.bytes_sent += comm.bytes_sent() - b0;
    if (stats) *stats = local;
}

}  // namespace

void attention_forward(comm::Communicator& comm, const DistOptions& opt, const DistForwardArgs& a, DistStats* stats) {
    kernels::FwdParams p;
    p.q = a.q, p.k = a.k, p.v = a.v, p.o = a.o, p.lse = a.lse, p.q_pos = p.k_pos = a.pos, p.pattern = a.pattern;
    p.head_offset = a.head_offset;
    p.threads = opt.threads;
    kernels::backend_of(p.q).validate_fwd(p);
    check_consistent(comm, opt, a.q, a.k);
    with_stats(comm, stats, opt, a.q.device, [&](dist::Ctx& cx) {
        switch (opt.strategy) {
            case StrategyKind::ring: dist::ring_forward(cx, comm, a); break;
            case StrategyKind::ulysses:
                dist::ulysses_forward(cx, comm, a, [&](const DistForwardArgs& s) { dist::local_forward(cx, s); });
                break;
            case StrategyKind::hybrid: {
                Groups g = hybrid_groups(comm, opt.ulysses_degree);
                const std::uint64_t b0 = g.ulysses->bytes_sent() + g.ring->bytes_sent();
                dist::ulysses_forward(cx, *g.ulysses, a, [&](const DistForwardArgs& s) { dist::ring_forward(cx, *g.ring, s); });
                cx.st.bytes_sent += g.ulysses->bytes_sent() + g.ring->bytes_sent() - b0;
                break;
            }
            case StrategyKind::allgather: dist::allgather_forward(cx, comm, a); break;
        }
    });
}

void attention_backward(comm::Communicator& comm, const DistOptions& opt, const DistBackwardArgs& a, DistStats* stats) {
    kernels::BwdParams p;
    p.q = a.q, p.k = a.k, p.v = a.v, p.o = a.o, p.dout = a.dout, p.lse = a.lse, p.dq = a.dq, p.dk = a.dk, p.dv = a.dv;
    p.q_pos = p.k_pos = a.pos, p.pattern = a.pattern;
    p.head_offset = a.head_offset;
    p.threads = opt.threads;
    kernels::backend_of(p.q).validate_bwd(p);
    check_consistent(comm, opt, a.q, a.k);
    with_stats(comm, stats, opt, a.q.device, [&](dist::Ctx& cx) {
        switch (opt.strategy) {
            case StrategyKind::ring: dist::ring_backward(cx, comm, a); break;
            case StrategyKind::ulysses:
                dist::ulysses_backward(cx, comm, a, [&](const DistBackwardArgs& s) { dist::local_backward(cx, s); });
                break;
            case StrategyKind::hybrid: {
                Groups g = hybrid_groups(comm, opt.ulysses_degree);
                const std::uint64_t b0 = g.ulysses->bytes_sent() + g.ring->bytes_sent();
                dist::ulysses_backward(cx, *g.ulysses, a, [&](const DistBackwardArgs& s) { dist::ring_backward(cx, *g.ring, s); });
                cx.st.bytes_sent += g.ulysses->bytes_sent() + g.ring->bytes_sent() - b0;
                break;
            }
            case StrategyKind::allgather: dist::allgather_backward(cx, comm, a); break;
        }
    });
}

}  // namespace longattn
