// Building a plan: the schedules of the strategies, once per (communicator, positions, pattern,
// shapes, options).
#include "strategies/plan.hpp"

#include <algorithm>
#include <tuple>

#include "longattn/cost_model.hpp"
#include "longattn/error.hpp"

namespace longattn::dist {

RingPlan::RingPlan(comm::Communicator& comm, const std::int64_t* pos, std::int64_t S, const Pattern& pat)
    : RingPlan(gather_shards(comm, pos, S), comm.rank(), pat) {}

RingPlan::RingPlan(Shards shards, int rank, const Pattern& pat)
    : P(static_cast<int>(shards.count.size())), r(rank), next((r + 1) % P), prev((r - 1 + P) % P), sh(std::move(shards)),
      need(needed_matrix(sh, pat)), last(static_cast<std::size_t>(P), -1), sent_lo(static_cast<std::size_t>(P), 0),
      sent_hi(static_cast<std::size_t>(P), 0) {
    for (int o = 0; o < P; ++o) {
        const auto uo = static_cast<std::size_t>(o);
        for (int s = 0; s < P; ++s)
            if (need[uo][static_cast<std::size_t>((o + s) % P)]) last[uo] = s;
        if (last[uo] > 0) std::tie(sent_lo[uo], sent_hi[uo]) = rows_needed_elsewhere(sh, pat, o);
    }
}

std::int64_t RingPlan::max_sent() const {
    std::int64_t m = 0;
    for (int o = 0; o < P; ++o) m = std::max(m, sent_rows(o));
    return m;
}

UlyssesPlan::UlyssesPlan(comm::Communicator& comm, const std::int64_t* pos, std::int64_t S, std::int64_t hq,
                         std::int64_t hkv)
    : sh(gather_shards(comm, pos, S)), rows(rows_of(sh)), q(split_even(hq, comm.size())), kv(kv_heads_of(q, hq / hkv)),
      G(hq / hkv) {}

std::vector<Range> kv_heads_of(const std::vector<Range>& q, std::int64_t G) {
    std::vector<Range> kv(q.size());
    for (std::size_t j = 0; j < q.size(); ++j)
        if (q[j].len > 0) {
            const std::int64_t lo = q[j].start / G, hi = (q[j].start + q[j].len - 1) / G + 1;
            kv[j] = {lo, hi - lo};
        }
    return kv;
}

namespace {

// Shapes other than the sequence length must agree on every rank; every rank reaches the same verdict,
// so a mismatch is an error everywhere instead of a hang.
void check_consistent(comm::Communicator& comm, const DistOptions& opt, const PlanShape& s) {
    double v[11] = {double(s.batch), double(s.heads), double(s.kv_heads), double(s.head_dim),
                    double(opt.strategy == StrategyKind::hybrid ? opt.ulysses_degree : 0)};
    for (int i = 0; i < 5; ++i) v[5 + i] = -v[i];
    v[10] = s.rows < 0 ? 1.0 : 0.0;
    comm.all_reduce_max(v, 11);
    const char* names[5] = {"q.shape[0] (batch)", "q.shape[2] (heads)", "k.shape[2] (kv heads)", "q.shape[3] (head dim)",
                            "ulysses_degree"};
    for (int i = 0; i < 5; ++i)
        require(v[i] == -v[5 + i], names[i], "must be the same on every rank; ranks differ (", -v[5 + i], " .. ", v[i], ")");
    require(v[10] == 0.0, "q.shape[1] (rows)", "must be >= 0 on every rank");
    require(s.heads >= 1 && s.kv_heads >= 1 && s.heads % s.kv_heads == 0, "q.shape[2] (heads)",
            "must be a positive multiple of k.shape[2] (kv heads), got ", s.heads, " and ", s.kv_heads);
    require(opt.progress_chunks >= 1, "progress_chunks", "must be >= 1, got ", opt.progress_chunks);
    require(opt.kv_head_chunk >= 0, "kv_head_chunk", "must be >= 0 (0 = all), got ", opt.kv_head_chunk);
    if (opt.strategy == StrategyKind::hybrid)
        require(opt.ulysses_degree >= 1 && comm.size() % opt.ulysses_degree == 0, "ulysses_degree",
                "must divide the number of ranks (", comm.size(), "), got ", opt.ulysses_degree);
}

}  // namespace

namespace {

// The mesh of a plan: the grid for a hybrid, the world as it is otherwise (checked first, so that the
// split is never reached with a bad degree).
Mesh mesh_for(comm::Communicator& comm, const DistOptions& opt, const PlanShape& shape) {
    check_consistent(comm, opt, shape);
    return Mesh(comm, opt.strategy == StrategyKind::hybrid ? opt.ulysses_degree : 0);
}

// DistOptions::choose: the cost model's pick for every rank's shard (gathered: collective), the same on
// every rank from the same tables and cluster (check_consistent refuses ranks that disagree).
DistOptions resolved(comm::Communicator& comm, const std::int64_t* pos, const Pattern& pattern, const PlanShape& shape,
                     const DistOptions& opt) {
    if (!opt.choose) return opt;
    const Shards sh = gather_shards(comm, pos, std::max<std::int64_t>(shape.rows, 0));
    std::vector<std::vector<std::int64_t>> all(sh.count.size());
    for (std::size_t r = 0; r < all.size(); ++r) all[r].assign(sh.pos_of(static_cast<int>(r)), sh.pos_of(static_cast<int>(r)) + sh.count[r]);
    return choose_strategy(*opt.choose, all, pattern, shape.batch, shape.heads, shape.kv_heads, shape.head_dim, opt);
}

}  // namespace

PlanState::PlanState(comm::Communicator& comm, const std::int64_t* pos_, const Pattern& pattern_, const PlanShape& shape_,
                     const DistOptions& opt_)
    : opt(resolved(comm, pos_, pattern_, shape_, opt_)), shape(shape_), pattern(pattern_),
      pos(pos_, pos_ + std::max<std::int64_t>(shape_.rows, 0)), mesh(mesh_for(comm, opt, shape_)) {
    const std::uint64_t b0 = mesh.bytes_sent();
    switch (opt.strategy) {
        case StrategyKind::ring: ring.emplace(comm, pos.data(), shape.rows, pattern); break;
        case StrategyKind::ulysses: ulysses.emplace(comm, pos.data(), shape.rows, shape.heads, shape.kv_heads); break;
        case StrategyKind::hybrid:
            ulysses.emplace(*mesh.ulysses, pos.data(), shape.rows, shape.heads, shape.kv_heads);
            ring.emplace(*mesh.ring, ulysses->sh.pos.data(), ulysses->sh.total(), pattern);
            break;
        case StrategyKind::allgather: shards = gather_shards(comm, pos.data(), shape.rows); break;
    }
    build_bytes = mesh.bytes_sent() - b0;
}

}  // namespace longattn::dist
