// Distributed benchmark (run under mpirun): one sequence sharded by a layout over the ranks, the
// chosen strategy forward (and backward), per-rank kernel time, communication wait, bytes sent and
// memory, and the sampled fp64 check of this rank's rows.
#include <omp.h>
#include <sys/resource.h>

#include <csignal>
#include <thread>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>
#include <sstream>
#include <vector>

#include "bench/bench.hpp"
#include "bench/check.hpp"
#include "bench/inputs.hpp"
#include "bench/memory.hpp"
#include "bench/outputs.hpp"
#include "bench/report.hpp"
#include "bench/save.hpp"
#include "comm/communicator.hpp"
#include "kernels/backend.hpp"
#include "longattn/cost_model.hpp"
#include "longattn/cpu_isa.hpp"
#include "longattn/distributed.hpp"
#include "longattn/layout.hpp"

namespace longattn::bench {
namespace {

double peak_rss_mb() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux reports KiB
}

struct Shard {
    std::int64_t B, S, H, Hkv, D;
    DType dtype;
    std::vector<std::int64_t> pos;
    std::vector<unsigned char> q, k, v, o, dout;
    std::vector<float> lse, dq, dk, dv;
    TensorView qv, kv, vv, ov, dov, dqv, dkv, dvv;

    Shard(const Job& job, const Inputs& in, std::vector<std::int64_t> p, bool grads)
        : B(job.shape.batch), S(static_cast<std::int64_t>(p.size())), H(job.shape.heads), Hkv(job.shape.kv_heads),
          D(job.shape.head_dim), dtype(job.shape.dtype), pos(std::move(p)) {
        const std::size_t es = dtype_size(dtype);
        auto make = [&](std::vector<unsigned char>& buf, std::int64_t heads) {
            buf.assign(static_cast<std::size_t>(B * S * heads * D) * es, 0);
            return contiguous_view(buf.data(), dtype, B, S, heads, D);
        };
        qv = make(q, H);
        kv = make(k, Hkv);
        vv = make(v, Hkv);
        ov = make(o, H);
        in.fill(SynthTensor::q, qv, pos.data());
        in.fill(SynthTensor::k, kv, pos.data());
        in.fill(SynthTensor::v, vv, pos.data());
        lse.assign(static_cast<std::size_t>(B * H * S), 0.0f);
        if (grads) {
            dov = make(dout, H);
            in.fill(SynthTensor::dout, dov, pos.data());
            dq.assign(static_cast<std::size_t>(B * S * H * D), 0.0f);
            dk.assign(static_cast<std::size_t>(B * S * Hkv * D), 0.0f);
            dv.assign(dk.size(), 0.0f);
            dqv = contiguous_view(dq.data(), DType::f32, B, S, H, D);
            dkv = contiguous_view(dk.data(), DType::f32, B, S, Hkv, D);
            dvv = contiguous_view(dv.data(), DType::f32, B, S, Hkv, D);
        }
    }
    // What a ring cannot do without: this rank's shards plus two K/V buffers (forward); the backward
    // adds dO, dQ, dK, dV (fp32) and two dK/dV buffers travelling with the K/V.
    double base_bytes(bool grads) const {
        const double es = static_cast<double>(dtype_size(dtype));
        const double qrow = double(B * S * H * D), kvrow = double(B * S * Hkv * D);
        double b = 2 * qrow * es + 2 * kvrow * es + 2 * (2 * kvrow * es);
        if (grads) b += qrow * es + qrow * 4 + 2 * kvrow * 4 + 2 * (2 * kvrow * 4);
        return b;
    }
    RankRows rows() const {
        RankRows r;
        r.pos = pos.data(), r.S = S, r.o = ov, r.lse = lse.data();
        if (dqv.rank == 4) r.dq = dqv, r.dk = dkv, r.dv = dvv;
        return r;
    }

    // The arguments of the run: the host views, or device copies of them with --device cuda.
    // grads: a backward runs (a rank without rows has empty gradient buffers, but its views still take
    // part in the call).
    void bind(const Job& job, const Pattern& pat, bool grads, DistForwardArgs& fa, DistBackwardArgs& ba) {
        auto use = [&](const TensorView& host) {
            if (job.exec.device == Device::cpu) return host;
            mirrors.emplace_back(job.exec.device, host);
            return mirrors.back().view();
        };
        mirrors.reserve(10);
        fa.q = use(qv), fa.k = use(kv), fa.v = use(vv), fa.o = use(ov);
        fa.lse = use(contiguous_view(lse.data(), DType::f32, B, H, S, 1)).ptr<float>();
        fa.pos = pos.data(), fa.pattern = &pat;
        if (!grads) return;
        ba.q = fa.q, ba.k = fa.k, ba.v = fa.v, ba.o = fa.o, ba.lse = fa.lse, ba.dout = use(dov);
        ba.dq = use(dqv), ba.dk = use(dkv), ba.dv = use(dvv);
        ba.pos = pos.data(), ba.pattern = &pat;
    }
    // Results back on the host for the check and --save (mirrors: q k v o lse [dout dq dk dv]).
    void results_to_host() const {
        for (std::size_t i : {3, 4, 6, 7, 8})
            if (i < mirrors.size()) mirrors[i].to_host();
    }
    std::vector<kernels::DeviceCopy> mirrors;
};

// Every rank's [B, H, S_r] values placed at their global positions: [B, H, N].
std::vector<float> gather_rows(comm::Communicator& comm, const Layout& layout, const std::vector<float>& mine,
                               std::int64_t BH) {
    const int P = comm.size();
    std::vector<std::size_t> bytes(static_cast<std::size_t>(P)), off(static_cast<std::size_t>(P));
    std::size_t total = 0;
    for (int r = 0; r < P; ++r) {
        bytes[static_cast<std::size_t>(r)] = static_cast<std::size_t>(BH * layout.local_count(r)) * sizeof(float);
        off[static_cast<std::size_t>(r)] = total;
        total += bytes[static_cast<std::size_t>(r)];
    }
    std::vector<float> all(total / sizeof(float));
    comm.all_gather_v(mine.data(), all.data(), bytes.data(), off.data());
    const std::int64_t N = layout.tokens();
    std::vector<float> out(static_cast<std::size_t>(BH * N));
    for (int r = 0; r < P; ++r) {
        const std::vector<std::int64_t> pos = layout.positions(r);
        const auto S = static_cast<std::int64_t>(pos.size());
        const float* src = all.data() + off[static_cast<std::size_t>(r)] / sizeof(float);
        for (std::int64_t bh = 0; bh < BH; ++bh)
            for (std::int64_t s = 0; s < S; ++s)
                out[static_cast<std::size_t>(bh * N + pos[static_cast<std::size_t>(s)])] = src[bh * S + s];
    }
    return out;
}

std::string describe(const Job& job, int P) {
    const Sweep& w = job.sweep;
    const Shape& s = job.shape;
    const Execution& x = job.exec;
    std::ostringstream os;
    os << "longattn-bench distributed ranks=" << P << " strategy=" << strategy_name(x.dist.strategy)
       << (x.dist.strategy == StrategyKind::hybrid ? " ulysses_degree=" + std::to_string(x.dist.ulysses_degree) : "")
       << " layout=" << layout_name(x.layout) << " mode=" << mode_name(w.mode) << " dtype=" << dtype_name(s.dtype)
       << " batch=" << s.batch << " heads=" << s.heads << " kv_heads=" << s.kv_heads << " head_dim=" << s.head_dim
       << " threads/rank=" << x.dist.threads << " scaling=" << (w.weak ? "weak" : "strong")
       << " device=" << (x.device == Device::cuda ? "cuda" : "cpu") << " comm=" << (x.nccl ? "nccl" : "mpi")
       << " cpu_isa=" << cpu_isa();
    return os.str();
}

// The cost model's job; cluster: its kernels' tiles, where it gives them.
ModelJob model_job(const Job& job, std::int64_t N, int P, const ClusterSpec* cluster) {
    ModelJob mj;
    if (cluster && cluster->tile_q > 0) {
        mj.fwd_tile_q = mj.bwd_tile_q = cluster->tile_q;
        mj.fwd_tile_k = mj.bwd_tile_k = cluster->tile_k;
    }
    mj.tokens = N, mj.batch = job.shape.batch, mj.heads = job.shape.heads, mj.kv_heads = job.shape.kv_heads;
    mj.head_dim = job.shape.head_dim, mj.dtype = job.shape.dtype, mj.layout = job.exec.layout, mj.ranks = P;
    mj.dist = job.exec.dist;
    return mj;
}

// The time the job's mode takes of a prediction, and that mode's ideal time.
double mode_time(const Job& job, const Prediction& p) {
    return job.sweep.mode == Mode::fwd ? p.fwd_s : job.sweep.mode == Mode::bwd ? p.bwd_s : p.fwd_s + p.bwd_s;
}
double mode_ideal(const Job& job, const Prediction& p) {
    return job.sweep.mode == Mode::fwd ? p.ideal_fwd_s : job.sweep.mode == Mode::bwd ? p.ideal_s - p.ideal_fwd_s : p.ideal_s;
}

std::string strategy_label(const DistOptions& d, LayoutKind l) {
    std::string s = strategy_name(d.strategy);
    if (d.strategy == StrategyKind::hybrid) s += " u=" + std::to_string(d.ulysses_degree);
    return s + " " + layout_name(l);
}

// --strategy auto: the fastest of rank_strategies at the largest length, the same on every rank (no
// traffic); rank 0 says why (the predicted times of the first three).
void pick_strategy(Job& job, int P, bool root) {
    const ClusterSpec cl = load_cluster(job.exec.cluster);
    const std::int64_t N = total_tokens(job, job.sweep.lengths.back(), P);
    const std::vector<StrategyChoice> opts =
        rank_strategies(cl, model_job(job, N, P, &cl), Pattern(spec_for_length(job, N)), job.sweep.mode != Mode::fwd);
    job.exec.dist = opts.front().dist, job.exec.layout = opts.front().layout;
    if (!root) return;
    std::printf("# strategy auto on %s, %lld tokens, %d ranks: predicted", cl.name.c_str(), static_cast<long long>(N), P);
    for (std::size_t i = 0; i < std::min<std::size_t>(3, opts.size()); ++i)
        std::printf("%s %s %.3f ms (kernels %.3f, exposed %.3f, efficiency %.1f%%)", i ? "," : "",
                    strategy_label(opts[i].dist, opts[i].layout).c_str(), opts[i].time_s * 1e3, opts[i].p.compute_s * 1e3,
                    opts[i].p.exposed_s * 1e3, 100 * opts[i].p.efficiency());
    if (!opts.front().fits)
        std::printf("; none fits the cluster's %.1f GiB per device (the first needs %.2f GiB)", cl.memory / 1073741824.0,
                    opts.front().p.device_memory(job.sweep.mode != Mode::fwd) / 1073741824.0);
    std::printf("; running %s\n", strategy_label(job.exec.dist, job.exec.layout).c_str());
}

// What a plan of a rank's `rows` adds to its need: its tables, and from its estimates wf (forward) and wb
// (backward) the strategy's scratch and the kernels' buffers. With --device cuda the working memory is
// the device's: only host memory is checked here.
void add_plan_need(MemoryNeed& need, const Job& job, const Plan& plan, std::size_t rows, const MemoryEstimate& wf,
                   const MemoryEstimate& wb) {
    need.tables = 8.0 * double(rows) + double(plan.table_bytes());
    need.working = job.exec.device == Device::cpu ? double(std::max(wf.scratch, wb.scratch)) : 0.0;
    need.kernel = double(std::max(wf.kernel, wb.kernel));
}

// --auto-check N: the model's first N choices at the largest length, timed in turn, one call each
// (after --warmup) per round for --iters rounds, so that every choice sees the same machine; each on a
// kept plan, the slowest rank's time. A choice this machine cannot hold is skipped (said so). Notes on
// rank 0: each one's predicted and measured median, and how far the pick is from the fastest.
void auto_check(const Job& job, comm::Communicator& comm, const Inputs& in, Report& rep) {
    const int P = comm.size(), me = comm.rank();
    const bool grads = job.sweep.mode != Mode::fwd;
    const ClusterSpec cl = load_cluster(job.exec.cluster);
    const std::int64_t N = total_tokens(job, job.sweep.lengths.back(), P);
    const Pattern pat(spec_for_length(job, N));
    std::vector<StrategyChoice> opts = rank_strategies(cl, model_job(job, N, P, &cl), pat, grads);
    opts.resize(std::min(opts.size(), static_cast<std::size_t>(job.exec.auto_check)));
    std::vector<std::vector<double>> times(opts.size());
    std::vector<std::string> skipped(opts.size());
    for (int round = 0; round < job.sweep.iters; ++round)
        for (std::size_t c = 0; c < opts.size(); ++c) {
            if (!skipped[c].empty()) continue;
            Job jc = job;
            jc.exec.dist = opts[c].dist, jc.exec.layout = opts[c].layout;
            std::vector<std::int64_t> pos = Layout(jc.exec.layout, N, P).positions(me);
            MemoryNeed need = tensor_memory(jc, N, static_cast<std::int64_t>(pos.size()), P);
            const PlanShape shape{job.shape.batch, static_cast<std::int64_t>(pos.size()), job.shape.heads,
                                  job.shape.kv_heads, job.shape.head_dim};
            Plan plan(comm, pos.data(), pat, shape, jc.exec.dist);
            const MemoryEstimate wf = plan.memory_estimate(false, job.shape.dtype, job.exec.device),
                                 wb = grads ? plan.memory_estimate(true, job.shape.dtype, job.exec.device) : MemoryEstimate{};
            add_plan_need(need, job, plan, pos.size(), wf, wb);
            try {
                refuse_what_cannot_fit(jc, &comm, N, need);
            } catch (const AgreedError& e) {  // alike on every rank
                skipped[c] = e.what();
                continue;
            }
            Shard sh(jc, in, std::move(pos), grads);
            DistForwardArgs fa;
            DistBackwardArgs ba;
            sh.bind(jc, pat, grads, fa, ba);
            fa.pos = ba.pos = nullptr;
            fa.pattern = ba.pattern = nullptr;
            double t = 0;
            for (int it = 0; it <= job.sweep.warmup; ++it) {
                comm.barrier();
                DistStats f, b;
                plan.forward(fa, &f);
                if (grads) plan.backward(ba, &b);
                t = (job.sweep.mode == Mode::bwd ? 0.0 : f.total_s) + b.total_s;
            }
            comm.all_reduce_max(&t, 1);
            times[c].push_back(t);
        }
    std::vector<double> med(opts.size(), 0.0);
    std::size_t best = opts.size();
    for (std::size_t c = 0; c < opts.size(); ++c) {
        if (times[c].empty()) continue;
        std::sort(times[c].begin(), times[c].end());
        med[c] = times[c][times[c].size() / 2];
        if (best == opts.size() || med[c] < med[best]) best = c;
    }
    char line[512];
    std::snprintf(line, sizeof(line), "auto check at %lld tokens: the cost model's first %zu choices, each timed once a "
                  "round for %d rounds in turn (median; the slowest rank)", static_cast<long long>(N), opts.size(),
                  job.sweep.iters);
    rep.note(line);
    for (std::size_t c = 0; c < opts.size(); ++c) {
        if (times[c].empty())
            std::snprintf(line, sizeof(line), "  %zu. %-22s predicted %10.3f ms, skipped: %s", c + 1,
                          strategy_label(opts[c].dist, opts[c].layout).c_str(), mode_time(job, opts[c].p) * 1e3,
                          skipped[c].c_str());
        else
            std::snprintf(line, sizeof(line), "  %zu. %-22s predicted %10.3f ms, measured %10.3f ms (%.3fx the fastest)",
                          c + 1, strategy_label(opts[c].dist, opts[c].layout).c_str(), mode_time(job, opts[c].p) * 1e3,
                          med[c] * 1e3, med[c] / med[best]);
        rep.note(line);
    }
    if (best == opts.size() || times[0].empty()) {
        rep.note("auto check: the pick was not timed");
        return;
    }
    std::snprintf(line, sizeof(line), "auto check: the pick, %s, measured %.3f ms; the fastest, %s, %.3f ms: the pick is "
                  "%s (%.1f%% slower; the aim: within 10%%)", strategy_label(opts[0].dist, opts[0].layout).c_str(),
                  med[0] * 1e3, strategy_label(opts[best].dist, opts[best].layout).c_str(), med[best] * 1e3,
                  med[0] <= 1.1 * med[best] ? "within 10%" : "NOT within 10%", 100 * (med[0] / med[best] - 1));
    rep.note(line);
}

}  // namespace

int run_predict(const Job& job) {
    const ClusterSpec cl = load_cluster(job.exec.cluster);
    const int P = job.exec.model_ranks;
    for (std::int64_t L : job.sweep.lengths) {
        const std::int64_t N = total_tokens(job, L, P);
        const Pattern pat(spec_for_length(job, N));
        const ModelJob mj = model_job(job, N, P, &cl);
        std::vector<StrategyChoice> opts;
        if (job.exec.distributed && !job.exec.auto_strategy) {
            const Prediction p = predict(cl, mj, model_costs(mj, pat));
            opts.push_back({mj.dist, mj.layout, p, p.fwd_s + p.bwd_s, p.fits(cl, true)});
        } else {
            opts = rank_strategies(cl, mj, pat, true);
        }
        std::printf("# cost model on %s: %lld tokens, %d rank%s, batch %lld, heads %lld over %lld kv heads, D=%lld, %s, "
                    "pattern %s\n",
                    cl.name.c_str(), static_cast<long long>(N), P, P == 1 ? "" : "s", static_cast<long long>(mj.batch),
                    static_cast<long long>(mj.heads), static_cast<long long>(mj.kv_heads),
                    static_cast<long long>(mj.head_dim), std::string(dtype_name(mj.dtype)).c_str(), pat.describe().c_str());
        std::printf("# kernels: the critical path's; exposed: communication not hidden behind them; efficiency: the "
                    "ideal time (every pair's FLOPs spread evenly, no communication) over fwd+bwd; imbalance: the "
                    "busiest rank's kernel time over the mean; MB_sent: the most one rank sends in a forward and a "
                    "backward call; GiB: the most one device holds for the attention in a backward call (Q, K, V, O, "
                    "LSE, dO, dQ, dK, dV and the strategy's scratch)");
        if (cl.memory > 0) std::printf("; fits: within the device's %.1f GiB (those that fit come first)", cl.memory / 1073741824.0);
        std::printf("\n");
        std::printf("%-22s %10s %10s %10s %10s %10s %10s %9s %10s %8s%s\n", "strategy", "fwd_ms", "bwd_ms", "total_ms",
                    "kernels_ms", "exposed_ms", "efficiency", "imbalance", "MB_sent", "GiB", cl.memory > 0 ? "  fits" : "");
        for (const StrategyChoice& o : opts) {
            double busiest = 0, mean = 0;
            for (std::size_t r = 0; r < o.p.rank_fwd_kernel_s.size(); ++r) {
                const double k = o.p.rank_fwd_kernel_s[r] + o.p.rank_bwd_kernel_s[r];
                busiest = std::max(busiest, k), mean += k / static_cast<double>(P);
            }
            std::printf("%-22s %10.3f %10.3f %10.3f %10.3f %10.3f %9.1f%% %9.3f %10.1f %8.2f%s\n",
                        strategy_label(o.dist, o.layout).c_str(), o.p.fwd_s * 1e3, o.p.bwd_s * 1e3,
                        (o.p.fwd_s + o.p.bwd_s) * 1e3, o.p.compute_s * 1e3, o.p.exposed_s * 1e3,
                        100 * o.p.efficiency(), mean > 0 ? busiest / mean : 1.0, static_cast<double>(o.p.max_bytes) / 1e6,
                        o.p.device_memory(true) / 1073741824.0, cl.memory <= 0 ? "" : o.fits ? "   yes" : "    no");
        }
        if (cl.memory_bandwidth <= 0) continue;
        // A decode step after this length's prefill: the cache held as --kv-placement places it.
        DecodeModelJob dm;
        dm.batch = mj.batch, dm.context = N, dm.new_tokens = job.decode.new_tokens, dm.heads = mj.heads;
        dm.kv_heads = mj.kv_heads, dm.head_dim = mj.head_dim, dm.page_tokens = job.decode.page_tokens, dm.dtype = mj.dtype;
        dm.placement = job.decode.placement, dm.layout = mj.layout, dm.ranks = P;
        std::printf("# a decode step of %lld new token%s per sequence over this cache (%s, pages of %lld):", static_cast<long long>(dm.new_tokens),
                    dm.new_tokens == 1 ? "" : "s", kv_placement_name(dm.placement), static_cast<long long>(dm.page_tokens));
        for (DecodeCombine c : {DecodeCombine::allgather, DecodeCombine::allreduce}) {
            dm.combine = c;
            const std::vector<DecodeRankCost> dc = decode_costs(dm, Pattern(spec_for_length(job, N + dm.new_tokens)));
            const DecodePrediction pd = predict_decode(cl, dm, dc);
            std::uint64_t most = 0;
            for (const DecodeRankCost& r : dc) most = std::max(most, r.read_bytes);
            std::printf("%s %s %.3f ms (kernel %.3f, combine %.3f; %.1f MB of cache read by the busiest rank)",
                        c == DecodeCombine::allgather ? "" : ",", decode_combine_name(c), pd.step_s() * 1e3,
                        pd.kernel_s * 1e3, pd.combine_s * 1e3, static_cast<double>(most) / 1e6);
        }
        std::printf("\n");
    }
    return 0;
}

int run_dist_bench(const Job& job_in, comm::Communicator& comm) {
    const int P = comm.size(), me = comm.rank();
    Job job = job_in;
    if (job.exec.auto_strategy) pick_strategy(job, P, me == 0);
    const std::optional<ClusterSpec> cluster =
        job.exec.cluster.empty() ? std::nullopt : std::optional<ClusterSpec>(load_cluster(job.exec.cluster));
    const bool grads = job.sweep.mode != Mode::fwd;
    const int kernel_threads = job.exec.dist.threads > 0 ? job.exec.dist.threads : omp_get_max_threads();
    if (job.exec.cpu_isa != "auto") set_cpu_isa(job.exec.cpu_isa);
    {
        const std::int64_t N = total_tokens(job, job.sweep.lengths.back(), P);
        refuse_what_cannot_fit(job, &comm, N, tensor_memory(job, N, Layout(job.exec.layout, N, P).local_count(me), P));
    }
    const Inputs in(job);
    OutputSet out(job, &comm);
    const double rss0 = peak_rss_mb();
    Report rep(job, me == 0);
    Progress progress(job, me == 0);
    rep.note(describe(job, P));
    rep.note("pattern " + Pattern(spec_for_length(job, total_tokens(job, job.sweep.lengths.back(), P))).describe() +
             ", documents " + job.pattern.docs.describe() + ", inputs " +
             (in.loaded() ? job.io.load_dir : "synthetic"));
    rep.note("time: median of " + std::to_string(job.sweep.iters) + " iterations (after " +
             std::to_string(job.sweep.warmup) +
             " warmup) of the slowest rank; TFLOP/s from the exact allowed-pair count (bwd = 2.5x fwd)");
    rep.note("MB_sent: bytes sent per rank (max); comm%: time blocked on transfers / wall (max); peak_MB: peak RSS "
             "growth per rank (max); est_MB: its estimate from the plan, checked before the run (max); mem_x: peak_MB / (Q,K,V,O shards + two K/V buffers" +
             std::string(grads ? " + dO,dQ,dK,dV + two dK/dV buffers" : "") + "); setup%: building the plan per call / time "
             "(least over ranks; 0 with --plan reuse, whose one build is in the notes)");
    std::vector<Column> cols{{"tokens", 10, -1}, {"per_rank", 9, -1}, {"density", 8, 5}, {"time_ms", 10, 2}, {"TFLOP/s", 9, 4},
                             {"MB_sent", 10, 1}, {"comm%", 7, 1}, {"peak_MB", 9, 0}, {"est_MB", 8, 0}, {"mem_x", 7, 2},
                             {"setup%", 7, 3}};
    if (cluster) {  // the cost model's time of the mode on the cluster, and its split
        rep.note("model_ms: the cost model's time on " + cluster->name + "; model_kern%: its kernels' share; model_eff: "
                 "its ideal time (every pair's FLOPs spread evenly, no communication) over its time");
        cols.insert(cols.end(), {{"model_ms", 10, 2}, {"model_kern%", 11, 1}, {"model_eff", 9, 3}});
    }
    cols.insert(cols.end(), {{"max_err", 10, 2, true}, {"#wrong", 6, -1}});
    rep.columns(cols);
    std::int64_t wrong_total = 0;
    for (std::int64_t L : job.sweep.lengths) {
        const std::int64_t N = total_tokens(job, L, P);
        const Pattern pat(spec_for_length(job, N));
        const Layout layout(job.exec.layout, N, P);
        // Refused before anything large is allocated: the largest length from the sizes alone before the
        // sweep starts, then each with the plan's working memory (its tables are all that building it
        // allocates).
        MemoryNeed need = tensor_memory(job, N, layout.local_count(me), P);
        std::vector<std::int64_t> pos = layout.positions(me);
        const PlanShape shape{job.shape.batch, static_cast<std::int64_t>(pos.size()), job.shape.heads,
                              job.shape.kv_heads, job.shape.head_dim};
        // --plan reuse: one plan for every call of this length, as a training loop keeps one per layer
        // (with --plan per-call this one only sizes the job).
        std::optional<Plan> plan;
        comm.barrier();
        const auto t0 = std::chrono::steady_clock::now();
        plan.emplace(comm, pos.data(), pat, shape, job.exec.dist);
        const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const MemoryEstimate wf = plan->memory_estimate(false, job.shape.dtype, job.exec.device),
                             wb = grads ? plan->memory_estimate(true, job.shape.dtype, job.exec.device) : MemoryEstimate{};
        add_plan_need(need, job, *plan, pos.size(), wf, wb);
        if (!job.exec.reuse_plan) plan.reset();
        refuse_what_cannot_fit(job, &comm, N, need);
        Shard sh(job, in, std::move(pos), grads);
        // Exact work of this rank: allowed pairs of its queries against the whole sequence.
        std::int64_t work = 0;
        for (std::int64_t p : sh.pos) work += pat.count_allowed(p, p + 1, 0, N);
        DistForwardArgs fa;
        DistBackwardArgs ba;
        sh.bind(job, pat, grads, fa, ba);
        if (plan) {
            fa.pos = ba.pos = nullptr;
            fa.pattern = ba.pattern = nullptr;
        }
        std::vector<DistStats> fs, bs;
        progress.begin(std::to_string(N) + " tokens, " + mode_name(job.sweep.mode) + " iteration");
        for (int it = 0; it < job.sweep.warmup + job.sweep.iters; ++it) {
            comm.barrier();
            if (job.faults.inject_failure == me) throw std::runtime_error("injected failure");
            if (it == job.sweep.warmup && job.faults.inject_stop == me) {
                // Now, or from a thread that many seconds into the iteration (in the middle of a transfer).
                const double after = job.faults.stop_after_s;
                if (after <= 0) ::raise(SIGSTOP);
                else std::thread([after] {
                    std::this_thread::sleep_for(std::chrono::duration<double>(after));
                    ::raise(SIGSTOP);
                }).detach();
            }
            if (it == job.sweep.warmup && job.faults.inject_sleep == me)
                std::this_thread::sleep_for(std::chrono::duration<double>(job.faults.sleep_s));
            DistStats f, b;
            if (plan) plan->forward(fa, &f);
            else attention_forward(comm, job.exec.dist, fa, &f);
            if (grads && plan) plan->backward(ba, &b);
            else if (grads) attention_backward(comm, job.exec.dist, ba, &b);
            if (it >= job.sweep.warmup) {
                fs.push_back(f);
                bs.push_back(b);
            }
            progress.tick(it + 1, job.sweep.warmup + job.sweep.iters);
        }
        const double peak_mb = peak_rss_mb() - rss0;  // before the check allocates anything
        sh.results_to_host();
        // Median iteration by this rank's wall time; the table takes the slowest rank.
        auto median = [](std::vector<DistStats> v) {
            std::sort(v.begin(), v.end(), [](const DistStats& a, const DistStats& b) { return a.total_s < b.total_s; });
            return v[v.size() / 2];
        };
        // In bwd mode the forward only prepares O and LSE: its time is not reported.
        const DistStats f = job.sweep.mode == Mode::bwd ? DistStats{} : median(fs);
        const DistStats b = grads ? median(bs) : DistStats{};

        if (job.faults.corrupt && me == 0 && sh.S > 0)
            store_from_f32(sh.ov.data, sh.dtype, 0, load_as_f32(sh.ov.data, sh.dtype, 0) + 0.5f);
        RankRows rows = sh.rows();
        std::vector<float> lse_all, delta_all;
        CheckResult c;
        if (job.checks.enabled) {
            if (grads) {
                lse_all = gather_rows(comm, layout, sh.lse, sh.B * sh.H);
                delta_all = gather_rows(comm, layout, row_delta(sh.ov, sh.dov), sh.B * sh.H);
                rows.lse_all = lse_all.data();
                rows.delta_all = delta_all.data();
            }
            c = check_rows(job, in, pat, N, rows, job.exec.dist.threads);
        }
        if (!job.io.save_dir.empty()) save_outputs(job, N, rows, &comm, out);

        // What the calls sent against the cost model's count for this rank (a call's plan building apart).
        const ModelJob mj = model_job(job, N, P, cluster ? &*cluster : nullptr);
        // One replay serves the byte check and (with --cluster, which needs the pairs) the prediction.
        const std::vector<RankCost> costs = model_costs(mj, pat, cluster.has_value());
        const RankCost& model = costs[static_cast<std::size_t>(me)];
        const std::uint64_t sent_f = fs.empty() ? 0 : fs.back().bytes_sent - fs.back().setup_bytes;
        const std::uint64_t sent_b = bs.empty() || !grads ? 0 : bs.back().bytes_sent - bs.back().setup_bytes;
        std::int64_t model_off = sent_f != model.fwd_bytes || (grads && sent_b != model.bwd_bytes) ? 1 : 0;
        if (model_off)
            std::printf("#  rank %d sent %llu bytes forward and %llu backward; the cost model counts %llu and %llu\n", me,
                        static_cast<unsigned long long>(sent_f), static_cast<unsigned long long>(sent_b),
                        static_cast<unsigned long long>(model.fwd_bytes), static_cast<unsigned long long>(grads ? model.bwd_bytes : 0));
        // The plan's scratch estimate (what the run is refused by, checked by the in-process tests against
        // the measured peak) against the model's, which has no plan.
        if (model.fwd_scratch != wf.scratch || (grads && model.bwd_scratch != wb.scratch)) {
            model_off = 1;
            std::printf("#  rank %d: the plan's scratch is %llu bytes forward and %llu backward; the cost model counts %llu "
                        "and %llu\n",
                        me, static_cast<unsigned long long>(wf.scratch), static_cast<unsigned long long>(wb.scratch),
                        static_cast<unsigned long long>(model.fwd_scratch),
                        static_cast<unsigned long long>(grads ? model.bwd_scratch : 0));
        }
        comm.all_reduce_sum(&model_off, 1);

        const double total = f.total_s + b.total_s, wait = f.wait_s + b.wait_s, kern = f.kernel_s + b.kernel_s;
        // Per thread: with more ranks than cores it is what a rank's kernels cost on a core of their own.
        const double kern_cpu = (f.kernel_cpu_s + b.kernel_cpu_s) / kernel_threads;
        // This rank's kernel time against the model's (with --cluster): the largest miss over ranks of the
        // wall time, and of the CPU time against the model's time for a rank alone on its device.
        Prediction model_p;
        double model_kern = 0, kern_miss[2] = {0, 0};
        if (cluster) {
            model_p = predict(*cluster, mj, costs);
            const auto r = static_cast<std::size_t>(me);
            model_kern = (job.sweep.mode != Mode::bwd ? model_p.rank_fwd_kernel_s[r] : 0.0) +
                         (grads ? model_p.rank_bwd_kernel_s[r] : 0.0);
            if (model_kern > 0) {
                kern_miss[0] = std::abs(kern / model_kern - 1);
                kern_miss[1] = std::abs(kern_cpu * model_p.ranks_per_device / model_kern - 1);
            }
            comm.all_reduce_max(kern_miss, 2);
        }
        const double mem_x = peak_mb * 1048576.0 / std::max(sh.base_bytes(grads), 1.0);
        if (job.exec.per_rank) {
            for (int r = 0; r < P; ++r) {
                comm.barrier();
                if (r == me)
                    std::printf("#  rank %d rows %lld work %lld pairs: kernel %.1f ms (CPU %.1f ms a thread), wait %.1f ms "
                                "(%.1f%%), wall %.1f ms, "
                                "sent %.1f MB, peak +%.0f MB (%.2fx; estimate %.0f MB), scratch %.0f MB, checked %lld values, "
                                "%lld wrong\n",
                                me, static_cast<long long>(sh.S), static_cast<long long>(work), kern * 1e3,
                                kern_cpu * 1e3, wait * 1e3,
                                100 * wait / std::max(total, 1e-12), total * 1e3, double(f.bytes_sent + b.bytes_sent) / 1e6,
                                peak_mb, mem_x, need.run() / 1048576.0,
                                double(std::max(f.scratch_peak_bytes, b.scratch_peak_bytes)) / 1048576.0,
                                static_cast<long long>(c.values), static_cast<long long>(c.wrong));
                if (r == me && cluster)
                    std::printf("#  rank %d kernel time: the cost model's %.1f ms (%.1f ms on a device of its own)\n", me,
                                model_kern * 1e3, model_kern / model_p.ranks_per_device * 1e3);
                std::fflush(stdout);
            }
        }
        // Maxima over ranks: [time, comm fraction, kernel, bytes, peak, mem ratio, work, err, plan build,
        // memory estimate]; minima
        // of work, kernel, and the setup per call: the plan's collectives also absorb the ranks' different
        // arrival times, which the last rank to arrive does not wait for.
        double mx[10] = {total, wait / std::max(total, 1e-12), kern, double(f.bytes_sent + b.bytes_sent), peak_mb,
                        mem_x, double(work), c.max_err, build_s, need.run() / 1048576.0};
        double mn[3] = {-double(work), -kern, -(f.setup_s + b.setup_s)};
        std::int64_t bad = c.wrong;
        comm.all_reduce_max(mx, 10);
        comm.all_reduce_max(mn, 3);
        comm.all_reduce_sum(&bad, 1);
        wrong_total += bad;
        const double pairs = double(pat.count_allowed(0, N, 0, N));
        const double flops = 4.0 * double(job.shape.head_dim) * double(job.shape.batch * job.shape.heads) * pairs *
                             (job.sweep.mode == Mode::fwd ? 1.0 : job.sweep.mode == Mode::bwd ? 2.5 : 3.5);
        std::vector<double> vals{double(N), double((N + P - 1) / P), pairs / (double(N) * double(N)), mx[0] * 1e3,
                                 flops / mx[0] * 1e-12, mx[3] / 1e6, 100 * mx[1], mx[4], mx[9], mx[5],
                                 100 * -mn[2] / std::max(mx[0], 1e-12)};
        if (cluster) {
            const double t = mode_time(job, model_p);
            const double kern = job.sweep.mode == Mode::fwd   ? model_p.compute_fwd_s
                                : job.sweep.mode == Mode::bwd ? model_p.compute_s - model_p.compute_fwd_s
                                                              : model_p.compute_s;
            vals.insert(vals.end(), {t * 1e3, 100 * kern / std::max(t, 1e-30), mode_ideal(job, model_p) / std::max(t, 1e-30)});
        }
        vals.insert(vals.end(), {mx[7], double(bad)});
        rep.row(vals);
        char line[640];
        std::snprintf(line, sizeof(line), "  work per rank max/min %.4f (allowed pairs); kernel time per rank max/min %.3f",
                      mx[6] / std::max(-mn[0], 1.0), mx[2] / std::max(-mn[1], 1e-12));
        rep.note(line);
        if (cluster) {
            const double t = mode_time(job, model_p);
            std::snprintf(line, sizeof(line),
                          "  cost model on %s: %.3f ms predicted (forward %.3f, backward %.3f; kernels %.3f, exposed "
                          "communication %.3f), %.3f ms measured: measured / predicted %.3f; each rank's kernel time "
                          "within %.1f%% of the model's, its kernel CPU time a thread within %.1f%% of the model's for "
                          "a rank alone on its device",
                          cluster->name.c_str(), t * 1e3, model_p.fwd_s * 1e3, model_p.bwd_s * 1e3, model_p.compute_s * 1e3,
                          model_p.exposed_s * 1e3, mx[0] * 1e3, mx[0] / std::max(t, 1e-30), 100 * kern_miss[0],
                          100 * kern_miss[1]);
            rep.note(line);
        }
        if (model_off) {
            std::snprintf(line, sizeof(line), "  bytes sent and scratch: %lld ranks differ from the cost model (counted as wrong)",
                          static_cast<long long>(model_off));
            wrong_total += model_off;
        } else {
            std::snprintf(line, sizeof(line), "  bytes sent and scratch: every rank's equal the cost model's");
        }
        rep.note(line);
        if (plan) {
            std::snprintf(line, sizeof(line), "  plan built once in %.2f ms for %d calls; workspace %.1f MB per rank",
                          mx[8] * 1e3, (job.sweep.warmup + job.sweep.iters) * (grads ? 2 : 1),
                          double(plan->workspace_bytes()) / 1048576.0);
            rep.note(line);
        }
    }
    if (job.exec.auto_check > 0) auto_check(job, comm, in, rep);
    const int rc = rep.finish(wrong_total, out);
    out.publish();
    return rc;
}

}  // namespace longattn::bench
