#include "strategies/executor.hpp"

#include <chrono>
#include <string>

#include "longattn/error.hpp"

namespace longattn::dist {
namespace {

// The tensors must have the plan's shapes; pos and pattern are the plan's own.
void check_against_plan(const PlanState& s, const TensorView& q, const TensorView& k, const std::int64_t* pos,
                        const Pattern* pattern) {
    require(pos == nullptr, "pos", "a Plan uses the positions it was built with; leave args.pos null");
    require(pattern == nullptr, "pattern", "a Plan uses the pattern it was built with; leave args.pattern null");
    const PlanShape& p = s.shape;
    require(q.rank == 4 && q.shape[0] == p.batch && q.shape[1] == p.rows && q.shape[2] == p.heads && q.shape[3] == p.head_dim,
            "q", "must have the plan's shape [", p.batch, ", ", p.rows, ", ", p.heads, ", ", p.head_dim, "]");
    require(k.rank == 4 && k.shape[0] == p.batch && k.shape[1] == p.rows && k.shape[2] == p.kv_heads && k.shape[3] == p.head_dim,
            "k", "must have the plan's shape [", p.batch, ", ", p.rows, ", ", p.kv_heads, ", ", p.head_dim, "]");
}

// Runs f with the call's context; the time counts from t0 (the call's start, its checks included).
template <class F>
void with_stats(PlanState& s, DistStats* stats, Device device, std::chrono::steady_clock::time_point t0, F&& f) {
    DistStats local;
    Ctx cx{s.opt, local, s.workspace, device};
    const std::uint64_t b0 = s.mesh.bytes_sent();
    f(cx);
    s.mesh.world.note_step(nullptr, -1);  // the call is over: a later wait is the caller's
    local.total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    local.bytes_sent += s.mesh.bytes_sent() - b0;
    if (stats) *stats = local;
}

}  // namespace

void agree_on_input(comm::Communicator& comm, const std::function<void()>& check) {
    comm.note_step("the agreement on a call's inputs", -1);
    double bad = 0;
    std::string mine;
    try {
        check();
    } catch (const Error& e) {
        bad = 1.0 + comm.rank();
        mine = e.what();
    }
    double worst = bad;
    comm.all_reduce_max(&worst, 1);
    if (bad != 0) throw Error(mine);
    if (worst != 0)
        throw Error("input: rank " + std::to_string(static_cast<int>(worst) - 1) + " refused its input (it names the problem)");
}

void execute_forward(PlanState& s, const DistForwardArgs& args, DistStats* stats) {
    const auto t0 = std::chrono::steady_clock::now();
    DistForwardArgs a = args;
    agree_on_input(s.mesh.world, [&] {
        check_against_plan(s, a.q, a.k, a.pos, a.pattern);
        a.pos = s.pos.data();
        a.pattern = &s.pattern;
        kernels::FwdParams p;
        p.q = a.q, p.k = a.k, p.v = a.v, p.o = a.o, p.lse = a.lse, p.q_pos = p.k_pos = a.pos, p.pattern = a.pattern;
        p.head_offset = a.head_offset;
        p.threads = s.opt.threads;
        kernels::backend_of(p.q).validate_fwd(p);
    });
    with_stats(s, stats, a.q.device, t0, [&](Ctx& cx) {
        Mesh& m = s.mesh;
        switch (s.opt.strategy) {
            case StrategyKind::ring: ring_forward(cx, m.world, *s.ring, a); break;
            case StrategyKind::ulysses:
                ulysses_forward(cx, m.world, *s.ulysses, a, [&](const DistForwardArgs& g) { local_forward(cx, g); });
                break;
            case StrategyKind::hybrid:
                ulysses_forward(cx, *m.ulysses, *s.ulysses, a,
                                [&](const DistForwardArgs& g) { ring_forward(cx, *m.ring, *s.ring, g); });
                break;
            case StrategyKind::allgather: allgather_forward(cx, m.world, *s.shards, a); break;
        }
    });
}

void execute_backward(PlanState& s, const DistBackwardArgs& args, DistStats* stats) {
    const auto t0 = std::chrono::steady_clock::now();
    DistBackwardArgs a = args;
    agree_on_input(s.mesh.world, [&] {
        check_against_plan(s, a.q, a.k, a.pos, a.pattern);
        a.pos = s.pos.data();
        a.pattern = &s.pattern;
        kernels::BwdParams p;
        p.q = a.q, p.k = a.k, p.v = a.v, p.o = a.o, p.dout = a.dout, p.lse = a.lse, p.dq = a.dq, p.dk = a.dk, p.dv = a.dv;
        p.q_pos = p.k_pos = a.pos, p.pattern = a.pattern;
        p.head_offset = a.head_offset;
        p.threads = s.opt.threads;
        kernels::backend_of(p.q).validate_bwd(p);
    });
    with_stats(s, stats, a.q.device, t0, [&](Ctx& cx) {
        Mesh& m = s.mesh;
        switch (s.opt.strategy) {
            case StrategyKind::ring: ring_backward(cx, m.world, *s.ring, a); break;
            case StrategyKind::ulysses:
                ulysses_backward(cx, m.world, *s.ulysses, a, [&](const DistBackwardArgs& g) { local_backward(cx, g); });
                break;
            case StrategyKind::hybrid:
                ulysses_backward(cx, *m.ulysses, *s.ulysses, a,
                                 [&](const DistBackwardArgs& g) { ring_backward(cx, *m.ring, *s.ring, g); });
                break;
            case StrategyKind::allgather: allgather_backward(cx, m.world, *s.shards, a); break;
        }
    });
}

}  // namespace longattn::dist
