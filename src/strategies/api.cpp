// The public entry points: the Plan (built once, called per layer and step) and the one-shot calls
// over it.
#include <chrono>

#include "longattn/distributed.hpp"
#include "longattn/error.hpp"
#include "strategies/plan.hpp"

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

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The tensors must have the plan's shapes; pos and pattern are the plan's own.
void check_against_plan(const dist::PlanState& s, const TensorView& q, const TensorView& k, const std::int64_t* pos,
                        const Pattern* pattern) {
    require(pos == nullptr, "pos", "a Plan uses the positions it was built with; leave args.pos null");
    require(pattern == nullptr, "pattern", "a Plan uses the pattern it was built with; leave args.pattern null");
    const PlanShape& p = s.shape;
    require(q.rank == 4 && q.shape[0] == p.batch && q.shape[1] == p.rows && q.shape[2] == p.heads && q.shape[3] == p.head_dim,
            "q", "must have the plan's shape [", p.batch, ", ", p.rows, ", ", p.heads, ", ", p.head_dim, "]");
    require(k.rank == 4 && k.shape[0] == p.batch && k.shape[1] == p.rows && k.shape[2] == p.kv_heads && k.shape[3] == p.head_dim,
            "k", "must have the plan's shape [", p.batch, ", ", p.rows, ", ", p.kv_heads, ", ", p.head_dim, "]");
}

// Runs check on this rank's input, then agrees with every rank: a rank whose input is refused throws
// its own error, and so does every other rank (naming it), so that no rank waits for it in a transfer.
template <class F>
void checked_on_every_rank(comm::Communicator& comm, F&& check) {
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

template <class F>
void with_stats(dist::PlanState& s, DistStats* stats, Device device, F&& f) {
    DistStats local;
    dist::Ctx cx{s.opt, local, s.workspace, device};
    const auto t0 = Clock::now();
    auto sent = [&s] {
        std::uint64_t b = s.comm.bytes_sent();
        if (s.ulysses_comm) b += s.ulysses_comm->bytes_sent() + s.ring_comm->bytes_sent();
        return b;
    };
    const std::uint64_t b0 = sent();
    f(cx);
    local.total_s = seconds_since(t0);
    local.bytes_sent += sent() - b0;
    if (stats) *stats = local;
}

PlanShape shape_of(const TensorView& q, const TensorView& k) {
    require(q.rank == 4, "q", "must be a rank-4 view [batch, rows, heads, head_dim], got rank ", q.rank);
    require(k.rank == 4, "k", "must be a rank-4 view [batch, rows, kv_heads, head_dim], got rank ", k.rank);
    return {q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[3]};
}

}  // namespace

Plan::Plan(comm::Communicator& comm, const std::int64_t* pos, const Pattern& pattern, const PlanShape& shape,
           const DistOptions& opt)
    : s_(std::make_unique<dist::PlanState>(comm, pos, pattern, shape, opt)) {}

Plan::~Plan() = default;
Plan::Plan(Plan&&) noexcept = default;
Plan& Plan::operator=(Plan&&) noexcept = default;

const PlanShape& Plan::shape() const { return s_->shape; }
const DistOptions& Plan::options() const { return s_->opt; }
std::uint64_t Plan::workspace_bytes() const { return s_->workspace.held_bytes(); }
void Plan::release_workspace() { s_->workspace.clear(); }

namespace {

void plan_forward(dist::PlanState& s, const DistForwardArgs& args, DistStats* stats) {
    DistForwardArgs a = args;
    checked_on_every_rank(s.comm, [&] {
        check_against_plan(s, a.q, a.k, a.pos, a.pattern);
        a.pos = s.pos.data();
        a.pattern = &s.pattern;
        kernels::FwdParams p;
        p.q = a.q, p.k = a.k, p.v = a.v, p.o = a.o, p.lse = a.lse, p.q_pos = p.k_pos = a.pos, p.pattern = a.pattern;
        p.head_offset = a.head_offset;
        p.threads = s.opt.threads;
        kernels::backend_of(p.q).validate_fwd(p);
    });
    with_stats(s, stats, a.q.device, [&](dist::Ctx& cx) {
        switch (s.opt.strategy) {
            case StrategyKind::ring: dist::ring_forward(cx, s.comm, *s.ring, a); break;
            case StrategyKind::ulysses:
                dist::ulysses_forward(cx, s.comm, *s.ulysses, a, [&](const DistForwardArgs& g) { dist::local_forward(cx, g); });
                break;
            case StrategyKind::hybrid:
                dist::ulysses_forward(cx, *s.ulysses_comm, *s.ulysses, a,
                                      [&](const DistForwardArgs& g) { dist::ring_forward(cx, *s.ring_comm, *s.ring, g); });
                break;
            case StrategyKind::allgather: dist::allgather_forward(cx, s.comm, *s.shards, a); break;
        }
    });
}

void plan_backward(dist::PlanState& s, const DistBackwardArgs& args, DistStats* stats) {
    DistBackwardArgs a = args;
    checked_on_every_rank(s.comm, [&] {
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
    with_stats(s, stats, a.q.device, [&](dist::Ctx& cx) {
        switch (s.opt.strategy) {
            case StrategyKind::ring: dist::ring_backward(cx, s.comm, *s.ring, a); break;
            case StrategyKind::ulysses:
                dist::ulysses_backward(cx, s.comm, *s.ulysses, a, [&](const DistBackwardArgs& g) { dist::local_backward(cx, g); });
                break;
            case StrategyKind::hybrid:
                dist::ulysses_backward(cx, *s.ulysses_comm, *s.ulysses, a,
                                       [&](const DistBackwardArgs& g) { dist::ring_backward(cx, *s.ring_comm, *s.ring, g); });
                break;
            case StrategyKind::allgather: dist::allgather_backward(cx, s.comm, *s.shards, a); break;
        }
    });
}

// One-shot calls: a plan for this call alone; its building is the call's setup time, and its
// traffic is the call's.
template <class Args, class Call>
void one_shot(comm::Communicator& comm, const DistOptions& opt, const Args& args, DistStats* stats, Call&& call) {
    const auto t0 = Clock::now();
    checked_on_every_rank(comm, [&] {
        require(args.pos != nullptr || args.q.rank < 2 || args.q.shape[1] == 0, "pos",
                "must be given (the global position of each local row)");
        require(args.pattern != nullptr, "pattern", "must be given");
        (void)shape_of(args.q, args.k);
    });
    dist::PlanState plan(comm, args.pos, *args.pattern, shape_of(args.q, args.k), opt);
    const double setup = seconds_since(t0);
    Args a = args;
    a.pos = nullptr;
    a.pattern = nullptr;
    DistStats st;
    call(plan, a, &st);
    st.setup_s = setup;
    st.total_s += setup;
    st.bytes_sent += plan.build_bytes;
    if (stats) *stats = st;
}

}  // namespace

void Plan::forward(const DistForwardArgs& args, DistStats* stats) { plan_forward(*s_, args, stats); }
void Plan::backward(const DistBackwardArgs& args, DistStats* stats) { plan_backward(*s_, args, stats); }

void attention_forward(comm::Communicator& comm, const DistOptions& opt, const DistForwardArgs& a, DistStats* stats) {
    one_shot(comm, opt, a, stats, plan_forward);
}

void attention_backward(comm::Communicator& comm, const DistOptions& opt, const DistBackwardArgs& a, DistStats* stats) {
    one_shot(comm, opt, a, stats, plan_backward);
}

}  // namespace longattn
