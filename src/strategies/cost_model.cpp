// The cost model's exact part (longattn/cost_model.hpp): the strategies' schedules replayed per rank.
#include "longattn/cost_model.hpp"

#include <algorithm>

#include "longattn/block_plan.hpp"
#include "longattn/error.hpp"
#include "strategies/plan.hpp"

namespace longattn {
namespace {

using u64 = std::uint64_t;
using Positions = std::vector<std::int64_t>;

// Allowed pairs between query and key positions, over their runs of consecutive positions.
double pairs_between(const Pattern& pat, const PositionRuns& q, const PositionRuns& k) {
    double n = 0;
    for (const auto& [qa, qb] : q)
        for (const auto& [ka, kb] : k) n += static_cast<double>(pat.count_allowed(qa, qb, ka, kb));
    return n;
}
PositionRuns runs_of(const std::int64_t* p, std::size_t n) { return position_runs(p, static_cast<std::int64_t>(n), SIZE_MAX); }

dist::Shards shards_of(const std::vector<Positions>& pos) {
    dist::Shards sh;
    for (const Positions& p : pos) {
        sh.offset.push_back(static_cast<std::int64_t>(sh.pos.size()));
        sh.count.push_back(static_cast<std::int64_t>(p.size()));
        sh.pos.insert(sh.pos.end(), p.begin(), p.end());
    }
    return sh;
}

// The ring over members with positions pos[m]: hq query heads and hkv kv heads on each, es bytes per
// K/V element. Adds into cost[m] (the world ranks of the members: at[m]).
void ring_cost(const std::vector<Positions>& pos, const std::vector<int>& at, const Pattern& pat, std::int64_t B,
               std::int64_t hq, std::int64_t hkv, std::int64_t D, std::size_t es, bool count,
               std::vector<RankCost>& cost) {
    const int P = static_cast<int>(pos.size());
    const dist::RingPlan rp(shards_of(pos), 0, pat);
    const u64 kv_row = static_cast<u64>(B * hkv * D) * 2 * es, grad_row = static_cast<u64>(B * hkv * D) * 2 * 4;
    for (int r = 0; r < P; ++r) {
        RankCost& c = cost[static_cast<std::size_t>(at[static_cast<std::size_t>(r)])];
        const Positions& mine = pos[static_cast<std::size_t>(r)];
        const PositionRuns qr = runs_of(mine.data(), mine.size());
        c.step_pairs.resize(static_cast<std::size_t>(P), 0.0);
        c.step_bytes.resize(static_cast<std::size_t>(P), 0);
        for (int t = 0; t < P; ++t) {
            const int o = (r - t + P) % P;
            const u64 sent = static_cast<u64>(rp.sent_rows(o));
            const int last = rp.last[static_cast<std::size_t>(o)];
            if (t + 1 < P && t < last) {
                c.fwd_bytes += sent * kv_row;
                c.bwd_bytes += sent * kv_row;
                c.step_bytes[static_cast<std::size_t>(t)] += sent * kv_row;
            }
            if (t >= 1 && t <= last) c.bwd_bytes += sent * grad_row;  // the running dK/dV, on or home
            if (count && rp.need[static_cast<std::size_t>(o)][static_cast<std::size_t>(r)] && !qr.empty()) {
                const double n = pairs_between(pat, qr, t == 0 ? qr : runs_of(rp.sent_pos(o), sent));
                c.step_pairs[static_cast<std::size_t>(t)] += n * static_cast<double>(B * hq);
                c.pairs += n * static_cast<double>(B * hq);
            }
        }
    }
}

// Ulysses over members with positions pos[m] (world ranks at[m]): the bytes of its all-to-alls.
// Returns each member's (query heads, kv heads) for what runs inside.
std::vector<std::pair<dist::Range, dist::Range>> ulysses_cost(const std::vector<Positions>& pos, const std::vector<int>& at,
                                                              std::int64_t B, std::int64_t hq, std::int64_t hkv,
                                                              std::int64_t D, std::size_t es, std::vector<RankCost>& cost) {
    const int U = static_cast<int>(pos.size());
    const std::vector<dist::Range> q = dist::split_even(hq, U);
    const std::int64_t G = hq / hkv;
    std::vector<std::pair<dist::Range, dist::Range>> heads(static_cast<std::size_t>(U));
    for (int j = 0; j < U; ++j) {
        const dist::Range& qj = q[static_cast<std::size_t>(j)];
        dist::Range kv{0, 0};
        if (qj.len > 0) kv = {qj.start / G, (qj.start + qj.len - 1) / G + 1 - qj.start / G};
        heads[static_cast<std::size_t>(j)] = {qj, kv};
    }
    const u64 d = static_cast<u64>(B * D), e = es;
    for (int me = 0; me < U; ++me) {
        RankCost& c = cost[static_cast<std::size_t>(at[static_cast<std::size_t>(me)])];
        const u64 S = pos[static_cast<std::size_t>(me)].size();
        const u64 mq = static_cast<u64>(heads[static_cast<std::size_t>(me)].first.len);
        const u64 mkv = static_cast<u64>(heads[static_cast<std::size_t>(me)].second.len);
        for (int j = 0; j < U; ++j) {
            if (j == me) continue;
            const u64 qj = static_cast<u64>(heads[static_cast<std::size_t>(j)].first.len);
            const u64 kj = static_cast<u64>(heads[static_cast<std::size_t>(j)].second.len);
            const u64 Sj = pos[static_cast<std::size_t>(j)].size();
            // Forward: Q, K, V out by heads; O (storage type) and LSE back by rows.
            c.fwd_bytes += d * S * (qj + 2 * kj) * e + d * Sj * mq * e + static_cast<u64>(B) * mq * Sj * 4;
            // Backward: Q, O, dO, K, V and LSE out; dQ, dK, dV (fp32) back.
            c.bwd_bytes += d * S * (3 * qj + 2 * kj) * e + static_cast<u64>(B) * qj * S * 4 + d * Sj * (mq + 2 * mkv) * 4;
        }
    }
    return heads;
}

}  // namespace

std::vector<RankCost> model_costs(const ModelJob& job, const Pattern& pat, bool count) {
    const int P = job.ranks;
    require(P >= 1, "ranks", "must be >= 1, got ", P);
    require(job.heads >= 1 && job.kv_heads >= 1 && job.heads % job.kv_heads == 0, "heads",
            "must be a positive multiple of the kv heads, got ", job.heads, " and ", job.kv_heads);
    const Layout layout(job.layout, job.tokens, P);
    std::vector<Positions> pos(static_cast<std::size_t>(P));
    for (int r = 0; r < P; ++r) pos[static_cast<std::size_t>(r)] = layout.positions(r);
    std::vector<RankCost> cost(static_cast<std::size_t>(P));
    const std::int64_t B = job.batch, Hq = job.heads, Hkv = job.kv_heads, D = job.head_dim, N = job.tokens;
    const std::size_t es = dtype_size(job.dtype);
    std::vector<int> world(static_cast<std::size_t>(P));
    for (int r = 0; r < P; ++r) world[static_cast<std::size_t>(r)] = r;
    switch (job.dist.strategy) {
        case StrategyKind::ring: ring_cost(pos, world, pat, B, Hq, Hkv, D, es, count, cost); break;
        case StrategyKind::ulysses: {
            const auto heads = ulysses_cost(pos, world, B, Hq, Hkv, D, es, cost);
            if (count) {
                const double all = static_cast<double>(pat.count_allowed(0, N, 0, N));
                for (int r = 0; r < P; ++r)
                    cost[static_cast<std::size_t>(r)].pairs = all * static_cast<double>(B * heads[static_cast<std::size_t>(r)].first.len);
            }
            break;
        }
        case StrategyKind::hybrid: {
            const int u = job.dist.ulysses_degree;
            require(u >= 1 && P % u == 0, "ulysses_degree", "must divide the number of ranks (", P, "), got ", u);
            // Groups of u consecutive ranks (strategies/mesh.hpp); ring i joins the i-th member of each.
            std::vector<std::pair<dist::Range, dist::Range>> heads;
            std::vector<Positions> gathered(static_cast<std::size_t>(P / u));
            for (int g = 0; g < P / u; ++g) {
                std::vector<Positions> members(pos.begin() + g * u, pos.begin() + (g + 1) * u);
                std::vector<int> at(static_cast<std::size_t>(u));
                for (int i = 0; i < u; ++i) at[static_cast<std::size_t>(i)] = g * u + i;
                heads = ulysses_cost(members, at, B, Hq, Hkv, D, es, cost);
                for (const Positions& m : members) gathered[static_cast<std::size_t>(g)].insert(gathered[static_cast<std::size_t>(g)].end(), m.begin(), m.end());
            }
            for (int i = 0; i < u; ++i) {
                std::vector<int> at(static_cast<std::size_t>(P / u));
                for (int g = 0; g < P / u; ++g) at[static_cast<std::size_t>(g)] = g * u + i;
                const auto& [qh, kh] = heads[static_cast<std::size_t>(i)];
                if (qh.len > 0) ring_cost(gathered, at, pat, B, qh.len, kh.len, D, es, count, cost);
            }
            break;
        }
        case StrategyKind::allgather: {
            for (int r = 0; r < P; ++r) {
                RankCost& c = cost[static_cast<std::size_t>(r)];
                const u64 S = pos[static_cast<std::size_t>(r)].size(), row = static_cast<u64>(B * Hkv * D);
                c.fwd_bytes = 2 * static_cast<u64>(P - 1) * S * row * es;
                c.bwd_bytes = c.fwd_bytes + 2 * (static_cast<u64>(N) - S) * row * 4;  // dK, dV back to their owners
                if (count)
                    c.pairs = pairs_between(pat, runs_of(pos[static_cast<std::size_t>(r)].data(), S), PositionRuns{{0, N}}) *
                              static_cast<double>(B * Hq);
            }
            break;
        }
    }
    return cost;
}

}  // namespace longattn
