// The cost model's exact part (longattn/cost_model.hpp): the strategies' schedules replayed per rank.
#include "longattn/cost_model.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

#include "kernels/attention.hpp"
#include "longattn/block_plan.hpp"
#include "longattn/error.hpp"
#include "strategies/plan.hpp"

namespace longattn {
namespace {

using u64 = std::uint64_t;
using Positions = std::vector<std::int64_t>;

// Allowed pairs between query and key positions, over their runs of consecutive positions (a run pair
// the pattern calls FULL or EMPTY without counting its rows).
double pairs_between(const Pattern& pat, const PositionRuns& q, const PositionRuns& k) {
    double n = 0;
    for (const auto& [qa, qb] : q)
        for (const auto& [ka, kb] : k) {
            const BlockClass c = pat.classify(qa, qb, ka, kb);
            n += c == BlockClass::full    ? static_cast<double>(qb - qa) * static_cast<double>(kb - ka)
                 : c == BlockClass::empty ? 0.0
                                          : static_cast<double>(pat.count_allowed(qa, qb, ka, kb));
        }
    return n;
}
PositionRuns runs_of(const std::int64_t* p, std::size_t n) { return position_runs(p, static_cast<std::int64_t>(n), SIZE_MAX); }

// The pairs a kernel computes for queries at q against keys at k in tiles of bq x bk rows: every pair of
// the tiles that are not EMPTY (the block planner's classes, as the kernels get them).
// Returns {all, of them in PARTIAL tiles}.
std::pair<double, double> tile_work(const Pattern& pat, const std::int64_t* q, std::int64_t nq, const std::int64_t* k,
                                    std::int64_t nk, std::int64_t bq, std::int64_t bk) {
    if (nq <= 0 || nk <= 0) return {0, 0};
    const HullTree keys(k, nk, bk);
    std::vector<TileRun> runs;
    double w = 0, partial = 0;
    for (std::int64_t i = 0; i < nq; i += bq) {
        const std::int64_t n = std::min(bq, nq - i);
        const auto [lo, hi] = std::minmax_element(q + i, q + i + n);
        runs.clear();
        collect_tiles(pat, keys, false, *lo, *hi + 1, runs);
        for (const TileRun& r : runs) {
            const double x = static_cast<double>(n) * static_cast<double>(std::min(nk, (r.first + r.count) * bk) - r.first * bk);
            w += x;
            if (r.cls == BlockClass::partial) partial += x;
        }
    }
    return {w, partial};
}

struct Tiles {
    std::int64_t fq, fk, bq, bk;
};
Tiles tiles_of(const ModelJob& job, const Pattern& pat) {
    Tiles t{job.fwd_tile_q, job.fwd_tile_k, job.bwd_tile_q, job.bwd_tile_k};
    if (t.fq <= 0 || t.fk <= 0) {  // the CPU forward's blocking (kernels/cpu/flash_fwd.cpp)
        const bool small = pat.has_sparse_part() && !pat.rows_are_intervals();
        t.fq = small ? 48 : 96, t.fk = small ? 64 : 128;
    }
    require(t.bq > 0 && t.bk > 0, "bwd_tile", "must be positive");
    return t;
}

dist::Shards shards_of(const std::vector<Positions>& pos) {
    dist::Shards sh;
    for (const Positions& p : pos) {
        sh.offset.push_back(static_cast<std::int64_t>(sh.pos.size()));
        sh.count.push_back(static_cast<std::int64_t>(p.size()));
        sh.pos.insert(sh.pos.end(), p.begin(), p.end());
    }
    return sh;
}

// The ring rp over members with positions pos[m]: hq query heads and hkv kv heads on each, es bytes per
// K/V element. Adds into cost[m] (the world ranks of the members: at[m]).
void ring_cost(const dist::RingPlan& rp, const std::vector<Positions>& pos, const std::vector<int>& at, const Pattern& pat,
               std::int64_t B, std::int64_t hq, std::int64_t hkv, std::int64_t D, std::size_t es, bool count,
               const Tiles& tl, std::vector<RankCost>& cost) {
    const int P = static_cast<int>(pos.size());
    const u64 kv_row = static_cast<u64>(B * hkv * D) * 2 * es, grad_row = static_cast<u64>(B * hkv * D) * 2 * 4;
    for (int r = 0; r < P; ++r) {
        RankCost& c = cost[static_cast<std::size_t>(at[static_cast<std::size_t>(r)])];
        const Positions& mine = pos[static_cast<std::size_t>(r)];
        const PositionRuns qr = runs_of(mine.data(), mine.size());
        c.step_pairs.resize(static_cast<std::size_t>(P), 0.0);
        for (auto* v : {&c.step_fwd_work, &c.step_bwd_work, &c.step_fwd_partial, &c.step_bwd_partial})
            v->resize(static_cast<std::size_t>(P), 0.0);
        c.step_bytes.resize(static_cast<std::size_t>(P), 0);
        c.step_bwd_bytes.resize(static_cast<std::size_t>(P), 0);
        for (int t = 0; t < P; ++t) {
            const int o = (r - t + P) % P;
            const u64 sent = static_cast<u64>(rp.sent_rows(o));
            const int last = rp.last[static_cast<std::size_t>(o)];
            if (t + 1 < P && t < last) {  // the shard held goes on, forward and backward
                c.fwd_bytes += sent * kv_row;
                c.bwd_bytes += sent * kv_row;
                c.step_bytes[static_cast<std::size_t>(t)] += sent * kv_row;
                c.step_bwd_bytes[static_cast<std::size_t>(t)] += sent * kv_row;
            }
            if (t >= 1 && t <= last) {  // the running dK/dV, on or home
                c.bwd_bytes += sent * grad_row;
                c.step_bwd_bytes[static_cast<std::size_t>(t)] += sent * grad_row;
            }
            if (count && rp.need[static_cast<std::size_t>(o)][static_cast<std::size_t>(r)] && !qr.empty()) {
                const std::int64_t* kp = t == 0 ? mine.data() : rp.sent_pos(o);
                const std::int64_t nk = t == 0 ? static_cast<std::int64_t>(mine.size()) : static_cast<std::int64_t>(sent);
                const std::int64_t nq = static_cast<std::int64_t>(mine.size());
                const double h = static_cast<double>(B * hq);
                // Shards whose every pair of runs is FULL (on a long causal ring, most of them): every pair is
                // allowed and every tile FULL, no need to count them one by one.
                const PositionRuns kr = runs_of(kp, static_cast<std::size_t>(nk));
                bool full = true;
                for (const auto& [qa, qb] : qr)
                    for (const auto& [ka, kb] : kr) full = full && pat.classify(qa, qb, ka, kb) == BlockClass::full;
                const double all_pairs = static_cast<double>(nq) * static_cast<double>(nk);
                const double n = (full ? all_pairs : pairs_between(pat, qr, kr)) * h;
                const auto [wf, pf] = full ? std::pair{all_pairs, 0.0} : tile_work(pat, mine.data(), nq, kp, nk, tl.fq, tl.fk);
                const auto [wb, pb] = full ? std::pair{all_pairs, 0.0} : tile_work(pat, mine.data(), nq, kp, nk, tl.bq, tl.bk);
                const auto ut = static_cast<std::size_t>(t);
                c.step_pairs[ut] += n;
                c.step_fwd_work[ut] += wf * h, c.step_bwd_work[ut] += wb * h;
                c.step_fwd_partial[ut] += pf * h, c.step_bwd_partial[ut] += pb * h;
                c.pairs += n, c.fwd_work += wf * h, c.bwd_work += wb * h, c.fwd_partial += pf * h, c.bwd_partial += pb * h;
            }
        }
    }
}

// into += from with its pairs and work times h, its bytes times b (a ring's cost is linear in the
// heads and the kv heads it carries).
void add_scaled(RankCost& into, const RankCost& from, double h, std::uint64_t b) {
    into.fwd_bytes += from.fwd_bytes * b, into.bwd_bytes += from.bwd_bytes * b;
    into.pairs += from.pairs * h, into.fwd_work += from.fwd_work * h, into.bwd_work += from.bwd_work * h;
    into.fwd_partial += from.fwd_partial * h, into.bwd_partial += from.bwd_partial * h;
    auto add = [](auto& dst, const auto& src, auto k) {
        dst.resize(src.size());
        for (std::size_t t = 0; t < src.size(); ++t) dst[t] += src[t] * k;
    };
    add(into.step_pairs, from.step_pairs, h), add(into.step_fwd_work, from.step_fwd_work, h);
    add(into.step_bwd_work, from.step_bwd_work, h), add(into.step_fwd_partial, from.step_fwd_partial, h);
    add(into.step_bwd_partial, from.step_bwd_partial, h);
    add(into.step_bytes, from.step_bytes, b), add(into.step_bwd_bytes, from.step_bwd_bytes, b);
}

// Ulysses over members with positions pos[m] (world ranks at[m]): the bytes of its all-to-alls.
// Returns each member's (query heads, kv heads) for what runs inside.
std::vector<std::pair<dist::Range, dist::Range>> ulysses_cost(const std::vector<Positions>& pos, const std::vector<int>& at,
                                                              std::int64_t B, std::int64_t hq, std::int64_t hkv,
                                                              std::int64_t D, std::size_t es, std::vector<RankCost>& cost) {
    const int U = static_cast<int>(pos.size());
    const std::vector<dist::Range> q = dist::split_even(hq, U), kv = dist::kv_heads_of(q, hq / hkv);
    std::vector<std::pair<dist::Range, dist::Range>> heads(static_cast<std::size_t>(U));
    for (int j = 0; j < U; ++j) heads[static_cast<std::size_t>(j)] = {q[static_cast<std::size_t>(j)], kv[static_cast<std::size_t>(j)]};
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
            const u64 f = d * S * (qj + 2 * kj) * e + d * Sj * mq * e + static_cast<u64>(B) * mq * Sj * 4;
            // Backward: Q, O, dO, K, V and LSE out; dQ, dK, dV (fp32) back.
            const u64 b = d * S * (3 * qj + 2 * kj) * e + static_cast<u64>(B) * qj * S * 4 + d * Sj * (mq + 2 * mkv) * 4;
            c.fwd_bytes += f, c.a2a_fwd_bytes += f;
            c.bwd_bytes += b, c.a2a_bwd_bytes += b;
        }
        c.a2a_fwd_calls += 5;  // Q, K, V, O, LSE
        c.a2a_bwd_calls += 9;  // Q, K, V, O, dO, LSE, dQ, dK, dV
    }
    return heads;
}

}  // namespace

std::vector<RankCost> model_costs(const ModelJob& job, const Pattern& pat, bool count) {
    const int P = job.ranks;
    require(P >= 1, "ranks", "must be >= 1, got ", P);
    require(job.heads >= 1 && job.kv_heads >= 1 && job.heads % job.kv_heads == 0, "heads",
            "must be a positive multiple of the kv heads, got ", job.heads, " and ", job.kv_heads);
    std::vector<Positions> pos(static_cast<std::size_t>(P));
    std::int64_t N = job.tokens;
    if (job.positions.empty()) {
        const Layout layout(job.layout, job.tokens, P);
        for (int r = 0; r < P; ++r) pos[static_cast<std::size_t>(r)] = layout.positions(r);
    } else {
        require(static_cast<int>(job.positions.size()) == P, "positions", "must hold one shard per rank (", P, "), got ",
                job.positions.size());
        pos = job.positions;
        N = 0;
        for (const Positions& p : pos) N += static_cast<std::int64_t>(p.size());
    }
    std::vector<RankCost> cost(static_cast<std::size_t>(P));
    const std::int64_t B = job.batch, Hq = job.heads, Hkv = job.kv_heads, D = job.head_dim;
    const std::size_t es = dtype_size(job.dtype);
    const Tiles tl = tiles_of(job, pat);
    // Every position, for the strategies whose kernels see the whole sequence (Ulysses, all-gather).
    std::vector<std::int64_t> all;
    if (count && (job.dist.strategy == StrategyKind::ulysses || job.dist.strategy == StrategyKind::allgather)) {
        for (const Positions& p : pos) all.insert(all.end(), p.begin(), p.end());
        std::sort(all.begin(), all.end());
    }
    const PositionRuns all_runs = runs_of(all.data(), all.size());
    std::vector<int> world(static_cast<std::size_t>(P));
    for (int r = 0; r < P; ++r) world[static_cast<std::size_t>(r)] = r;
    const bool f32 = job.dtype == DType::f32;  // O is its own accumulator
    const int chunks = job.dist.progress_chunks;
    for (int r = 0; r < P; ++r) {
        RankCost& c = cost[static_cast<std::size_t>(r)];
        const u64 S = pos[static_cast<std::size_t>(r)].size(), b = static_cast<u64>(B), d = static_cast<u64>(D);
        c.fwd_tensors = b * S * (2 * static_cast<u64>(Hq + Hkv)) * d * es + b * static_cast<u64>(Hq) * S * 4;
        c.bwd_tensors = b * S * static_cast<u64>(Hq) * d * es + b * S * static_cast<u64>(Hq + 2 * Hkv) * d * 4;
    }
    switch (job.dist.strategy) {
        case StrategyKind::ring: {
            const dist::RingPlan rp(shards_of(pos), 0, pat);
            ring_cost(rp, pos, world, pat, B, Hq, Hkv, D, es, count, tl, cost);
            for (int r = 0; r < P; ++r) {
                const dist::Dims d{B, static_cast<std::int64_t>(pos[static_cast<std::size_t>(r)].size()), Hq, Hkv, D};
                for (bool bwd : {false, true})
                    (bwd ? cost[static_cast<std::size_t>(r)].bwd_scratch : cost[static_cast<std::size_t>(r)].fwd_scratch) =
                        dist::ring_scratch(d, rp.max_sent(), rp.sent_rows(r), es, f32, chunks, bwd);
            }
            break;
        }
        case StrategyKind::ulysses: {
            const auto heads = ulysses_cost(pos, world, B, Hq, Hkv, D, es, cost);
            std::int64_t kv_sent = 0;
            for (const auto& hk : heads) kv_sent += hk.second.len;
            for (int r = 0; r < P; ++r) {
                const auto& [qh, kh] = heads[static_cast<std::size_t>(r)];
                const dist::Dims d{B, static_cast<std::int64_t>(pos[static_cast<std::size_t>(r)].size()), Hq, Hkv, D};
                for (bool bwd : {false, true})
                    (bwd ? cost[static_cast<std::size_t>(r)].bwd_scratch : cost[static_cast<std::size_t>(r)].fwd_scratch) =
                        dist::ulysses_scratch(d, N, qh.len, kh.len, kv_sent, es, bwd, 0);
            }
            if (count) {
                const double n = pairs_between(pat, all_runs, all_runs);
                const auto [wf, pf] = tile_work(pat, all.data(), N, all.data(), N, tl.fq, tl.fk);
                const auto [wb, pb] = tile_work(pat, all.data(), N, all.data(), N, tl.bq, tl.bk);
                for (int r = 0; r < P; ++r) {
                    RankCost& c = cost[static_cast<std::size_t>(r)];
                    const double h = static_cast<double>(B * heads[static_cast<std::size_t>(r)].first.len);
                    c.pairs = n * h, c.fwd_work = wf * h, c.bwd_work = wb * h, c.fwd_partial = pf * h, c.bwd_partial = pb * h;
                }
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
            // Every ring runs over the same gathered shards: one ring of one head, scaled by each ring's heads.
            std::vector<RankCost> unit(static_cast<std::size_t>(P / u));
            std::vector<int> at(static_cast<std::size_t>(P / u));
            for (int g = 0; g < P / u; ++g) at[static_cast<std::size_t>(g)] = g;
            const dist::RingPlan rp(shards_of(gathered), 0, pat);
            ring_cost(rp, gathered, at, pat, 1, 1, 1, D, es, count, tl, unit);
            std::int64_t kv_sent = 0;  // a kv head goes to every member holding one of its query heads
            for (const auto& hk : heads) kv_sent += hk.second.len;
            for (int i = 0; i < u; ++i) {
                const auto& [qh, kh] = heads[static_cast<std::size_t>(i)];
                for (int g = 0; g < P / u; ++g) {
                    RankCost& c = cost[static_cast<std::size_t>(g * u + i)];
                    if (qh.len > 0)
                        add_scaled(c, unit[static_cast<std::size_t>(g)], static_cast<double>(B * qh.len),
                                   static_cast<std::uint64_t>(B * kh.len));
                    const std::int64_t Ng = static_cast<std::int64_t>(gathered[static_cast<std::size_t>(g)].size());
                    const dist::Dims d{B, static_cast<std::int64_t>(pos[static_cast<std::size_t>(g * u + i)].size()), Hq, Hkv, D};
                    const dist::Dims call{B, Ng, qh.len, kh.len, D};
                    for (bool bwd : {false, true}) {
                        const u64 inner = dist::ring_scratch(call, rp.max_sent(), rp.sent_rows(g), es, f32, chunks, bwd);
                        (bwd ? c.bwd_scratch : c.fwd_scratch) =
                            dist::ulysses_scratch(d, Ng, qh.len, kh.len, kv_sent, es, bwd, inner);
                    }
                }
            }
            break;
        }
        case StrategyKind::allgather: {
            for (int r = 0; r < P; ++r) {
                RankCost& c = cost[static_cast<std::size_t>(r)];
                const u64 S = pos[static_cast<std::size_t>(r)].size(), row = static_cast<u64>(B * Hkv * D);
                c.fwd_bytes = 2 * static_cast<u64>(P - 1) * S * row * es;
                c.bwd_bytes = c.fwd_bytes + 2 * (static_cast<u64>(N) - S) * row * 4;  // dK, dV back to their owners
                c.a2a_fwd_bytes = c.fwd_bytes, c.a2a_bwd_bytes = c.bwd_bytes;
                const std::int64_t chunk = job.dist.kv_head_chunk > 0 ? std::min(job.dist.kv_head_chunk, Hkv) : Hkv;
                const int gathers = static_cast<int>((Hkv + chunk - 1) / chunk);
                c.a2a_fwd_calls = 2 * gathers;  // K, V per chunk of kv heads
                c.a2a_bwd_calls = 4 * gathers;  // K, V, and dK, dV back
                const dist::Dims d{B, static_cast<std::int64_t>(S), Hq, Hkv, D};
                c.fwd_scratch = dist::allgather_scratch(d, N, P, es, job.dist.kv_head_chunk, false);
                c.bwd_scratch = dist::allgather_scratch(d, N, P, es, job.dist.kv_head_chunk, true);
                if (count) {
                    const Positions& mine = pos[static_cast<std::size_t>(r)];
                    const double h = static_cast<double>(B * Hq);
                    c.pairs = pairs_between(pat, runs_of(mine.data(), S), all_runs) * h;
                    const auto [wf, pf] = tile_work(pat, mine.data(), static_cast<std::int64_t>(S), all.data(), N, tl.fq, tl.fk);
                    const auto [wb, pb] = tile_work(pat, mine.data(), static_cast<std::int64_t>(S), all.data(), N, tl.bq, tl.bk);
                    c.fwd_work = wf * h, c.bwd_work = wb * h, c.fwd_partial = pf * h, c.bwd_partial = pb * h;
                }
            }
            break;
        }
    }
    return cost;
}

namespace {

std::string trim(const std::string& x) {
    const auto a = x.find_first_not_of(" \t\r"), b = x.find_last_not_of(" \t\r");
    return a == std::string::npos ? std::string() : x.substr(a, b - a + 1);
}

}  // namespace

ClusterSpec load_cluster(const std::string& path) {
    std::ifstream in(path);
    require(in.good(), "cluster", "cannot read '", path, "'");
    // section.key -> (value, line)
    std::map<std::string, std::pair<std::string, int>> kv;
    std::string line, section;
    for (int n = 1; std::getline(in, line); ++n) {
        const std::string t = trim(line.substr(0, line.find_first_of("#;")));
        if (t.empty()) continue;
        if (t.front() == '[') {
            require(t.back() == ']', "cluster", path, ":", n, ": a section header must end with ']', got '", t, "'");
            section = trim(t.substr(1, t.size() - 2));
            require(section == "cluster" || section == "intra" || section == "inter" || section == "device", "cluster",
                    path, ":", n, ": unknown section [", section, "] (cluster, intra, inter, device)");
            continue;
        }
        const auto eq = t.find('=');
        require(eq != std::string::npos && !section.empty(), "cluster", path, ":", n,
                ": expected 'key = value' inside a section, got '", t, "'");
        kv[section + "." + trim(t.substr(0, eq))] = {trim(t.substr(eq + 1)), n};
    }
    static const char* known[] = {"cluster.name", "cluster.nodes", "cluster.devices_per_node", "intra.bandwidth_GBps",
                                  "intra.latency_us", "intra.alltoall_bandwidth_GBps", "intra.alltoall_latency_us",
                                  "inter.bandwidth_GBps", "inter.latency_us", "device.fwd_tflops",
                                  "device.bwd_tflops", "device.memory_GiB", "device.fwd_partial_extra",
                                  "device.bwd_partial_extra", "device.tile_q", "device.tile_k",
                                  "device.memory_bandwidth_GBps", "device.decode_tflops"};
    for (const auto& [k, v] : kv)
        require(std::find(std::begin(known), std::end(known), k) != std::end(known), "cluster", path, ":", v.second,
                ": unknown key '", k.substr(k.find('.') + 1), "' in [", k.substr(0, k.find('.')), "]");
    auto number = [&](const std::string& k, bool needed, double lo) {
        const auto it = kv.find(k);
        require(it != kv.end() || !needed, "cluster", path, ": [", k.substr(0, k.find('.')), "] needs ",
                k.substr(k.find('.') + 1));
        if (it == kv.end()) return 0.0;
        std::size_t used = 0;
        double x = 0;
        try {
            x = std::stod(it->second.first, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        require(used == it->second.first.size() && std::isfinite(x) && x >= lo, "cluster", path, ":", it->second.second,
                ": ", k.substr(k.find('.') + 1), " must be a number >= ", lo, ", got '", it->second.first, "'");
        return x;
    };
    ClusterSpec c;
    c.name = kv.count("cluster.name") ? kv["cluster.name"].first : path;
    c.nodes = static_cast<int>(number("cluster.nodes", true, 1));
    c.devices_per_node = static_cast<int>(number("cluster.devices_per_node", true, 1));
    c.intra_bandwidth = number("intra.bandwidth_GBps", c.devices_per_node > 1, 1e-9) * 1e9;
    c.intra_latency = number("intra.latency_us", c.devices_per_node > 1, 0) * 1e-6;
    c.alltoall_bandwidth = number("intra.alltoall_bandwidth_GBps", false, 1e-9) * 1e9;
    c.alltoall_latency = number("intra.alltoall_latency_us", false, 0) * 1e-6;
    require(kv.count("intra.alltoall_bandwidth_GBps") == kv.count("intra.alltoall_latency_us"), "cluster", path,
            ": [intra] alltoall_bandwidth_GBps and alltoall_latency_us go together");
    c.inter_bandwidth = number("inter.bandwidth_GBps", c.nodes > 1, 1e-9) * 1e9;
    c.inter_latency = number("inter.latency_us", c.nodes > 1, 0) * 1e-6;
    c.fwd_flops = number("device.fwd_tflops", true, 1e-12) * 1e12;
    c.bwd_flops = number("device.bwd_tflops", true, 1e-12) * 1e12;
    c.memory = number("device.memory_GiB", false, 0) * 1073741824.0;
    c.fwd_partial_extra = number("device.fwd_partial_extra", false, 0);
    c.bwd_partial_extra = number("device.bwd_partial_extra", false, 0);
    c.memory_bandwidth = number("device.memory_bandwidth_GBps", false, 0) * 1e9;
    c.decode_flops = number("device.decode_tflops", false, 0) * 1e12;
    c.tile_q = static_cast<std::int64_t>(number("device.tile_q", false, 0));
    c.tile_k = static_cast<std::int64_t>(number("device.tile_k", false, 0));
    require((c.tile_q > 0) == (c.tile_k > 0), "cluster", path, ": [device] tile_q and tile_k go together");
    return c;
}

Prediction predict(const ClusterSpec& cl, const ModelJob& job, const std::vector<RankCost>& cost) {
    const int P = job.ranks;
    require(P >= 1, "ranks", "must be >= 1, got ", P);
    require(static_cast<int>(cost.size()) == P, "cost", "must hold one entry per rank");
    const double D = static_cast<double>(job.head_dim);
    const double share = std::max(1.0, double(P) / double(cl.devices()));  // ranks per device
    const double per_fwd = 4 * D / cl.fwd_flops * share, per_bwd = 10 * D / cl.bwd_flops * share;  // s per pair
    const int G = cl.devices_per_node;
    // Rank r on device r (with more ranks than devices: r * devices / ranks, consecutive ranks together).
    auto node = [&](int r) { return (P > cl.devices() ? static_cast<int>(std::int64_t{r} * cl.devices() / P) : r) / G; };
    auto same_node = [&](int a, int b) { return node(a) == node(b); };
    auto send = [&](int a, int b, double bytes) {
        if (bytes <= 0) return 0.0;
        return same_node(a, b) ? cl.intra_latency + bytes / cl.intra_bandwidth : cl.inter_latency + bytes / cl.inter_bandwidth;
    };
    const bool hybrid = job.dist.strategy == StrategyKind::hybrid;
    const int u = hybrid ? job.dist.ulysses_degree : job.dist.strategy == StrategyKind::ring ? 1 : P;
    // The peers of a rank's all-to-alls: its Ulysses group, or everyone.
    auto a2a = [&](int r, double bytes, int calls) {
        if (calls == 0) return 0.0;
        const int g0 = r / u * u;
        int off = 0;
        for (int j = g0; j < g0 + u; ++j) off += j != r && !same_node(r, j);
        const double f = u > 1 ? double(off) / double(u - 1) : 0.0;
        const bool measured = cl.alltoall_bandwidth > 0;  // within the node, as calibrated
        const double lat = off > 0 ? cl.inter_latency : measured ? cl.alltoall_latency : cl.intra_latency;
        double t = calls * lat;
        if (f < 1) t += bytes * (1 - f) / (measured ? cl.alltoall_bandwidth : cl.intra_bandwidth);
        if (f > 0) t = std::max(t, calls * lat + bytes * f / cl.inter_bandwidth);
        return t;
    };
    Prediction pr;
    double a2a_f = 0, a2a_b = 0, kern_f = 0, kern_b = 0, pairs = 0;
    for (int r = 0; r < P; ++r) {
        const RankCost& c = cost[static_cast<std::size_t>(r)];
        pr.rank_fwd_kernel_s.push_back((c.fwd_work + cl.fwd_partial_extra * c.fwd_partial) * per_fwd);
        pr.rank_bwd_kernel_s.push_back((c.bwd_work + cl.bwd_partial_extra * c.bwd_partial) * per_bwd);
        a2a_f = std::max(a2a_f, a2a(r, double(c.a2a_fwd_bytes), c.a2a_fwd_calls));
        a2a_b = std::max(a2a_b, a2a(r, double(c.a2a_bwd_bytes), c.a2a_bwd_calls));
        pairs += c.pairs;
        pr.max_bytes = std::max(pr.max_bytes, c.fwd_bytes + c.bwd_bytes);
        pr.max_memory = std::max(pr.max_memory, c.peak(true));
        pr.max_memory_fwd = std::max(pr.max_memory_fwd, c.peak(false));
        if (c.step_pairs.empty()) {  // no ring: the kernels run once on the rank's pairs
            kern_f = std::max(kern_f, pr.rank_fwd_kernel_s.back());
            kern_b = std::max(kern_b, pr.rank_bwd_kernel_s.back());
        }
    }
    // The ring (or the hybrid's rings): step by step, each the slowest rank's max(kernel, transfer).
    double ring_f = 0, ring_b = 0;
    std::size_t steps = 0;
    for (const RankCost& c : cost) steps = std::max(steps, c.step_pairs.size());
    for (std::size_t t = 0; t < steps; ++t) {
        double sf = 0, sb = 0, kf = 0, kb = 0;
        for (int r = 0; r < P; ++r) {
            const RankCost& c = cost[static_cast<std::size_t>(r)];
            if (t >= c.step_pairs.size()) continue;
            const int next = (r / u + 1) % (P / u) * u + r % u;
            const double k1 = (c.step_fwd_work[t] + cl.fwd_partial_extra * c.step_fwd_partial[t]) * per_fwd;
            const double k2 = (c.step_bwd_work[t] + cl.bwd_partial_extra * c.step_bwd_partial[t]) * per_bwd;
            kf = std::max(kf, k1), kb = std::max(kb, k2);
            sf = std::max(sf, std::max(k1, send(r, next, double(c.step_bytes[t]))));
            sb = std::max(sb, std::max(k2, send(r, next, double(c.step_bwd_bytes[t]))));
        }
        ring_f += sf, ring_b += sb, kern_f += kf, kern_b += kb;
    }
    pr.fwd_s = a2a_f + (steps ? ring_f : kern_f);
    pr.bwd_s = a2a_b + (steps ? ring_b : kern_b);
    pr.compute_s = kern_f + kern_b;
    pr.compute_fwd_s = kern_f;
    pr.exposed_s = pr.fwd_s + pr.bwd_s - pr.compute_s;
    pr.ideal_s = pairs * (per_fwd + per_bwd) / P;
    pr.ideal_fwd_s = pairs * per_fwd / P;
    pr.ranks_per_device = share;
    return pr;
}

std::vector<StrategyChoice> rank_strategies(const ClusterSpec& cl, const ModelJob& job, const Pattern& pat, bool backward) {
    std::vector<DistOptions> cands;
    for (StrategyKind k : {StrategyKind::ring, StrategyKind::ulysses, StrategyKind::allgather}) {
        DistOptions d = job.dist;
        d.strategy = k, d.ulysses_degree = 1;
        cands.push_back(d);
    }
    for (int u = 2; u < job.ranks; ++u)
        if (job.ranks % u == 0) {
            DistOptions d = job.dist;
            d.strategy = StrategyKind::hybrid, d.ulysses_degree = u;
            cands.push_back(d);
        }
    std::vector<StrategyChoice> out;
    const std::vector<LayoutKind> layouts = job.positions.empty() ? std::vector<LayoutKind>{LayoutKind::zigzag, LayoutKind::contiguous}
                                                                  : std::vector<LayoutKind>{job.layout};
    for (const DistOptions& d : cands)
        for (LayoutKind l : layouts) {
            ModelJob j = job;
            j.dist = d, j.layout = l;
            if (cl.tile_q > 0) j.fwd_tile_q = j.bwd_tile_q = cl.tile_q, j.fwd_tile_k = j.bwd_tile_k = cl.tile_k;
            const Prediction p = predict(cl, j, model_costs(j, pat));
            out.push_back({d, l, p, backward ? p.fwd_s + p.bwd_s : p.fwd_s, p.fits(cl, backward)});
        }
    std::stable_sort(out.begin(), out.end(), [](const StrategyChoice& a, const StrategyChoice& b) {
        return a.fits != b.fits ? a.fits : a.time_s < b.time_s;
    });
    return out;
}

std::vector<DecodeRankCost> decode_costs(const DecodeModelJob& job, const Pattern& pat) {
    const int P = job.ranks;
    require(P >= 1, "ranks", "must be >= 1, got ", P);
    require(job.heads >= 1 && job.kv_heads >= 1 && job.heads % job.kv_heads == 0, "heads",
            "must be a positive multiple of the kv heads, got ", job.heads, " and ", job.kv_heads);
    require(job.page_tokens >= 1 && job.new_tokens >= 1 && job.context >= 0, "page_tokens",
            "page_tokens and new_tokens must be >= 1 and the context >= 0");
    const std::int64_t T = job.new_tokens, len = job.context + T, pt = job.page_tokens;
    const std::int64_t cap = job.capacity > 0 ? job.capacity : len;
    require(cap >= len, "capacity", "must hold the context and the new tokens (", len, "), got ", cap);
    const double block_bytes = double(kernels::kv_page_elems(1, job.head_dim, pt)) * double(dtype_size(job.dtype));
    std::vector<DecodeRankCost> cost(static_cast<std::size_t>(P));
    std::vector<std::int64_t> qpos(static_cast<std::size_t>(T));
    for (std::int64_t i = 0; i < T; ++i) qpos[static_cast<std::size_t>(i)] = len - T + i;
    // One page of n positions at kp on rank r.
    auto page = [&](int r, const std::int64_t* kp, std::int64_t n) {
        if (n == 0 || pat.classify_positions(qpos.data(), T, kp, n) == BlockClass::empty) return;
        DecodeRankCost& c = cost[static_cast<std::size_t>(r)];
        c.blocks += job.kv_heads;
        c.work += double(n) * double(T) * double(job.heads);
    };
    for (std::int64_t b = 0; b < job.batch; ++b) {
        if (job.placement == KvPlacement::round_robin) {  // page j of sequence b on rank (j + b) % P
            std::vector<std::int64_t> kp(static_cast<std::size_t>(pt));
            for (std::int64_t j = 0; j * pt < len; ++j) {
                const std::int64_t n = std::min(pt, len - j * pt);
                for (std::int64_t k = 0; k < n; ++k) kp[static_cast<std::size_t>(k)] = j * pt + k;
                page(static_cast<int>((j + b) % P), kp.data(), n);
            }
        } else {  // the rank's positions of the layout over the capacity, in its local order, pt to a page
            const Layout lay(job.layout, cap, P);
            for (int r = 0; r < P; ++r) {
                std::vector<std::int64_t> mine;  // in the order they are written: increasing
                for (std::int64_t x : lay.positions(r))
                    if (x < len) mine.push_back(x);
                std::sort(mine.begin(), mine.end());
                for (std::size_t a = 0; a < mine.size(); a += static_cast<std::size_t>(pt))
                    page(r, mine.data() + a, std::min<std::int64_t>(pt, static_cast<std::int64_t>(mine.size() - a)));
            }
        }
    }
    const u64 nl = static_cast<u64>(job.batch * job.heads * T), no = nl * static_cast<u64>(job.head_dim);
    for (DecodeRankCost& c : cost) {
        c.read_bytes = static_cast<u64>(double(c.blocks) * block_bytes);
        if (P == 1) continue;
        if (job.combine == DecodeCombine::allgather) {
            c.sent = (1 + nl + no) * 4;
            c.received = static_cast<u64>(P - 1) * c.sent;
        } else {
            c.sent = c.received = (1 + nl) * 8 + (nl + no) * 8;
        }
    }
    return cost;
}

DecodePrediction predict_decode(const ClusterSpec& cl, const DecodeModelJob& job, const std::vector<DecodeRankCost>& cost) {
    require(cl.memory_bandwidth > 0, "cluster", cl.name, ": the decode model needs [device] memory_bandwidth_GBps");
    const int P = job.ranks;
    require(static_cast<int>(cost.size()) == P, "cost", "must hold one entry per rank");
    const double share = std::max(1.0, double(P) / double(cl.devices()));
    const double flops = cl.decode_flops > 0 ? cl.decode_flops : cl.fwd_flops;
    const double per_pair = 4.0 * double(job.head_dim) / flops * share, per_byte = share / cl.memory_bandwidth;
    DecodePrediction pr;
    for (const DecodeRankCost& c : cost) {
        pr.rank_kernel_s.push_back(std::max(double(c.read_bytes) * per_byte, c.work * per_pair));
        pr.kernel_s = std::max(pr.kernel_s, pr.rank_kernel_s.back());
    }
    if (P > 1) {
        // The combine's peers are every rank: over the inter-node link when they span nodes.
        const bool across = cl.nodes > 1 && P > cl.devices_per_node;
        const double lat = across ? cl.inter_latency : cl.intra_latency;
        const double bw = across ? cl.inter_bandwidth : cl.intra_bandwidth;
        const double elems = double(job.batch * job.heads * job.new_tokens) * double(job.head_dim + 1);
        const double rounds = std::ceil(std::log2(double(P)));  // a collective's latency: a tree's depth
        if (job.combine == DecodeCombine::allgather)
            pr.combine_s = rounds * lat + double(cost.front().received) / bw + double(P - 1) * elems * 12 * per_byte;
        else
            pr.combine_s = 2 * rounds * lat + 2.0 * double(P - 1) / double(P) * double(cost.front().sent) / bw +
                           elems * 24 * per_byte;
    }
    return pr;
}

DistOptions choose_strategy(const AutoChoice& choice, const std::vector<std::vector<std::int64_t>>& pos, const Pattern& pat,
                            std::int64_t batch, std::int64_t heads, std::int64_t kv_heads, std::int64_t head_dim,
                            DistOptions opt) {
    opt.choose.reset();
    ModelJob j;
    j.batch = batch, j.heads = heads, j.kv_heads = kv_heads, j.head_dim = head_dim, j.dtype = choice.dtype;
    j.ranks = static_cast<int>(pos.size());
    j.positions = pos;
    j.dist = opt;
    const StrategyChoice best = rank_strategies(choice.cluster, j, pat, choice.backward).front();
    opt.strategy = best.dist.strategy, opt.ulysses_degree = best.dist.ulysses_degree;
    return opt;
}

}  // namespace longattn
