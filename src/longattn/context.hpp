#pragma once
// The long-lived half of the API: a communicator, the options, and the plans built for it, cached.
// A training step whose batches change document lengths (or layouts, or shapes) calls the context
// with each step's positions and pattern; the context finds the plan built for them, or builds one,
// so what repeats is planned once and only what changed is built.
//
// The cache holds up to max_plans plans, keyed on (the shapes, the pattern, the positions of the local
// rows); the least recently used goes first. Storage type and device are not part of the key: a plan
// serves tensors of any dtype on any device the build has. Lookups are collective: a call finds a
// plan only where every rank finds its own in the same entry (one all-reduce), so a rank whose
// positions changed makes every rank build the new plan together, and the caches of all ranks stay
// alike.
//
// Like a Plan: every rank calls the context in the same order; the communicator must outlive it; not
// thread-safe (one context per thread of calls).
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "longattn/distributed.hpp"

namespace longattn {

struct ContextOptions {
    DistOptions dist;           // strategy, degrees, threads of every plan
    std::size_t max_plans = 8;  // >= 1
};

struct CacheStats {
    std::int64_t hits = 0, misses = 0, evictions = 0;
    std::size_t plans = 0;  // held now
};

class Context {
public:
    Context(comm::Communicator& comm, const ContextOptions& opt = {});
    ~Context();
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    // args.pos and args.pattern name the call's positions and pattern (as for the one-shot calls);
    // the shapes come from args.q and args.k.
    void forward(const DistForwardArgs& args, DistStats* stats = nullptr);
    void backward(const DistBackwardArgs& args, DistStats* stats = nullptr);
    // The plan for these positions, pattern and shapes, found or built (collective).
    Plan& plan(const std::int64_t* pos, const Pattern& pattern, const PlanShape& shape);

    // Collective, in place of a forward or backward call whose arguments this rank cannot even read:
    // every rank throws (this one with why, the others naming this rank), none waits.
    [[noreturn]] void refuse(const std::string& why);

    const CacheStats& cache() const { return stats_; }
    const ContextOptions& options() const { return opt_; }
    comm::Communicator& communicator() const { return comm_; }
    void clear();  // drops every plan (not collective)
    // DistOptions::choose for the plans built from now on (null: opt's strategy); drops every plan (not
    // collective: every rank calls it alike).
    void set_choice(std::shared_ptr<const AutoChoice> choice);
    // The options of the plan the last forward or backward ran (with choose: the strategy picked); null
    // before any.
    const DistOptions* last_options() const { return last_ ? &*last_ : nullptr; }

private:
    struct Entry;
    // Collective: every rank's verdict on its arguments (bad: why this rank refuses) and its lookup are
    // agreed in one all-reduce before anything is built.
    Plan& find(const std::int64_t* pos, const Pattern* pattern, const PlanShape& shape, std::string bad);
    static PlanShape shape_or(const TensorView& q, const TensorView& k, std::string& bad);
    template <class Args>
    void call(const Args& args, DistStats* stats, void (Plan::*run)(const Args&, DistStats*));
    comm::Communicator& comm_;
    ContextOptions opt_;
    DType call_dtype_ = DType::bf16;  // the storage of the call that may build a plan (DistOptions::choose)
    std::optional<DistOptions> last_;
    std::list<std::unique_ptr<Entry>> lru_;  // most recently used first; alike on every rank
    CacheStats stats_;
};

}  // namespace longattn
