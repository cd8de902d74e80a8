// The public entry points: the Plan (built once, called per layer and step) and the one-shot calls
// over a plan of their own.
#include <chrono>

#include "longattn/distributed.hpp"
#include "longattn/error.hpp"
#include "strategies/executor.hpp"

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

MemoryEstimate Plan::memory_estimate(bool backward, DType storage, Device device) const {
    MemoryEstimate m = dist::working_memory(*s_, backward, storage);
    if (device != Device::cpu) m.kernel = 0;
    return m;
}

std::uint64_t Plan::table_bytes() const {
    auto shards = [](const dist::Shards& sh) { return (sh.count.size() + sh.offset.size() + sh.pos.size()) * sizeof(std::int64_t); };
    std::uint64_t b = s_->pos.size() * sizeof(std::int64_t);
    if (const auto& r = s_->ring) {
        b += shards(r->sh) + r->need.size() * r->need.size();
        b += r->last.size() * sizeof(int) + (r->sent_lo.size() + r->sent_hi.size()) * sizeof(std::int64_t);
    }
    if (const auto& u = s_->ulysses) b += shards(u->sh) + (u->rows.size() + u->q.size() + u->kv.size()) * sizeof(dist::Range);
    if (s_->shards) b += shards(*s_->shards);
    return b;
}
void Plan::forward(const DistForwardArgs& args, DistStats* stats) { dist::execute_forward(*s_, args, stats); }
void Plan::backward(const DistBackwardArgs& args, DistStats* stats) { dist::execute_backward(*s_, args, stats); }

namespace {

PlanShape shape_of(const TensorView& q, const TensorView& k) {
    require(q.rank == 4, "q", "must be a rank-4 view [batch, rows, heads, head_dim], got rank ", q.rank);
    require(k.rank == 4, "k", "must be a rank-4 view [batch, rows, kv_heads, head_dim], got rank ", k.rank);
    return {q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[3]};
}

// One-shot calls: a plan for this call alone; its building is the call's setup time, and its
// traffic is the call's.
template <class Args, class Execute>
void one_shot(comm::Communicator& comm, const DistOptions& opt, const Args& args, DistStats* stats, Execute&& execute) {
    dist::agree_on_input(comm, [&] {
        require(args.pos != nullptr || args.q.rank < 2 || args.q.shape[1] == 0, "pos",
                "must be given (the global position of each local row)");
        require(args.pattern != nullptr, "pattern", "must be given");
        (void)shape_of(args.q, args.k);
    });
    const auto t0 = std::chrono::steady_clock::now();
    dist::PlanState plan(comm, args.pos, *args.pattern, shape_of(args.q, args.k), opt);
    const double setup = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Args a = args;
    a.pos = nullptr;
    a.pattern = nullptr;
    DistStats st;
    execute(plan, a, &st);
    st.setup_s = setup;
    st.total_s += setup;
    st.bytes_sent += plan.build_bytes;
    st.setup_bytes = plan.build_bytes;
    if (stats) *stats = st;
}

}  // namespace

void attention_forward(comm::Communicator& comm, const DistOptions& opt, const DistForwardArgs& a, DistStats* stats) {
    one_shot(comm, opt, a, stats, dist::execute_forward);
}

void attention_backward(comm::Communicator& comm, const DistOptions& opt, const DistBackwardArgs& a, DistStats* stats) {
    one_shot(comm, opt, a, stats, dist::execute_backward);
}

}  // namespace longattn
