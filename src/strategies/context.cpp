#include "longattn/context.hpp"

#include <algorithm>
#include <string>

#include "comm/communicator.hpp"
#include "longattn/cost_model.hpp"
#include "longattn/error.hpp"

namespace longattn {
namespace {

bool same(const PatternSpec& a, const PatternSpec& b) {
    const bool windows = a.window.has_value() == b.window.has_value() &&
                         (!a.window || (a.window->left == b.window->left && a.window->right == b.window->right));
    return windows && a.causal == b.causal && a.doc_bounds == b.doc_bounds && a.global_first == b.global_first &&
           a.global_list == b.global_list && a.block == b.block && a.block_mask == b.block_mask &&
           a.block_mask_rows == b.block_mask_rows && a.block_mask_cols == b.block_mask_cols && a.stride == b.stride &&
           a.random_blocks == b.random_blocks && a.random_seed == b.random_seed && a.seq_len == b.seq_len &&
           a.alibi_slopes == b.alibi_slopes && a.softcap == b.softcap && a.scale == b.scale;
}

bool same(const PlanShape& a, const PlanShape& b) {
    return a.batch == b.batch && a.rows == b.rows && a.heads == b.heads && a.kv_heads == b.kv_heads &&
           a.head_dim == b.head_dim;
}

}  // namespace

struct Context::Entry {
    PlanShape shape;
    PatternSpec spec;
    std::vector<std::int64_t> pos;
    Plan plan;
};

Context::Context(comm::Communicator& comm, const ContextOptions& opt) : comm_(comm), opt_(opt) {
    require(opt.max_plans >= 1, "max_plans", "must be >= 1, got ", opt.max_plans);
}

Context::~Context() = default;

void Context::clear() {
    lru_.clear();
    stats_.plans = 0;
}

Plan& Context::plan(const std::int64_t* pos, const Pattern& pattern, const PlanShape& shape) {
    return find(pos, &pattern, shape, "");
}

Plan& Context::find(const std::int64_t* pos, const Pattern* pattern, const PlanShape& shape, std::string bad) {
    // This rank's entry for the key, and whether its arguments can be planned at all.
    if (bad.empty() && pattern == nullptr) bad = "pattern: a Context call names its pattern (args.pattern is null)";
    if (bad.empty() && shape.rows < 0) bad = "rows: must be >= 0, got " + std::to_string(shape.rows);
    if (bad.empty() && shape.rows > 0 && pos == nullptr) bad = "pos: null for " + std::to_string(shape.rows) + " local rows";
    // Per entry, whether it is this rank's plan for the call (entries in the same order on every rank),
    // and a rank that refuses: agreed in one all-reduce, an entry serving only where it serves everyone.
    std::vector<double> v(lru_.size() + 1, 1.0);  // 1: not this rank's plan
    std::size_t i = 0;
    for (const auto& e : lru_) {
        v[i++] = bad.empty() && same(e->shape, shape) && same(e->spec, pattern->spec()) &&
                         std::equal(e->pos.begin(), e->pos.end(), pos, pos + shape.rows)
                     ? 0.0
                     : 1.0;
    }
    v.back() = bad.empty() ? 0.0 : 1.0 + comm_.rank();
    comm_.all_reduce_max(v.data(), v.size());
    if (!bad.empty()) throw Error(bad);
    if (v.back() != 0)
        throw Error("input: rank " + std::to_string(static_cast<int>(v.back()) - 1) + " refused its plan's arguments");
    const auto hit = std::find(v.begin(), v.end() - 1, 0.0);
    if (hit != v.end() - 1) {
        lru_.splice(lru_.begin(), lru_, std::next(lru_.begin(), hit - v.begin()));
        ++stats_.hits;
        return lru_.front()->plan;
    }
    // Built together on every rank; the caches stay alike because every rank decides alike.
    ++stats_.misses;
    DistOptions dist = opt_.dist;
    if (dist.choose && dist.choose->dtype != call_dtype_) {  // the model counts the call's bytes
        auto c = std::make_shared<AutoChoice>(*dist.choose);
        c->dtype = call_dtype_;
        dist.choose = std::move(c);
    }
    auto e = std::make_unique<Entry>(Entry{shape, pattern->spec(), std::vector<std::int64_t>(pos, pos + shape.rows),
                                           Plan(comm_, pos, *pattern, shape, dist)});
    lru_.push_front(std::move(e));
    if (lru_.size() > opt_.max_plans) {
        lru_.pop_back();
        ++stats_.evictions;
    }
    stats_.plans = lru_.size();
    return lru_.front()->plan;
}

void Context::set_choice(std::shared_ptr<const AutoChoice> choice) {
    opt_.dist.choose = std::move(choice);
    clear();
}

void Context::refuse(const std::string& why) {
    find(nullptr, nullptr, PlanShape{}, why.empty() ? std::string("refused") : why);
    throw Error(why);  // find() has thrown on every rank already
}

// The call's shapes, or why its views cannot give them.
PlanShape Context::shape_or(const TensorView& q, const TensorView& k, std::string& bad) {
    if (q.rank == 4 && k.rank == 4) return PlanShape{q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[3]};
    bad = "q: q and k must be [B, S, H, D] views";
    return PlanShape{};
}

template <class Args>
void Context::call(const Args& args, DistStats* stats, void (Plan::*run)(const Args&, DistStats*)) {
    std::string bad;
    const PlanShape shape = shape_or(args.q, args.k, bad);
    call_dtype_ = args.q.dtype;
    Plan& p = find(args.pos, args.pattern, shape, bad);
    last_ = p.options();
    Args a = args;
    a.pos = nullptr, a.pattern = nullptr;  // the plan's own
    (p.*run)(a, stats);
}

void Context::forward(const DistForwardArgs& args, DistStats* stats) { call(args, stats, &Plan::forward); }
void Context::backward(const DistBackwardArgs& args, DistStats* stats) { call(args, stats, &Plan::backward); }

}  // namespace longattn
