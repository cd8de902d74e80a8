// --mode decode: a KV cache of -b tokens per sequence (filled from the generator, or by a prefill
// through --strategy), then --steps decode steps of --new-tokens per sequence; per-step latency,
// tokens per second, bytes per rank, the cache's memory, and two baselines in the same run (pass-Q,
// and the cache gathered onto rank 0). On one process it times the kernel against a triad bandwidth
// measured at the same thread count. Sampled steps are checked against an fp64 reference computed
// from the regenerated sequence.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench.hpp"
#include "bench/check.hpp"
#include "bench/inputs.hpp"
#include "bench/memory.hpp"
#include "bench/report.hpp"
#include "comm/communicator.hpp"
#include "kernels/attention.hpp"
#include "longattn/cost_model.hpp"
#include "longattn/cpu_isa.hpp"
#include "longattn/kv_cache.hpp"

namespace longattn::bench {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}
double p99(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(v.size()))) - 1)];
}

struct Setup {
    std::int64_t B = 1, T = 1, Hq = 1, Hkv = 1, D = 64, L = 0, cap = 0;
    DType dtype = DType::f32;
    int P = 1, rank = 0;
};

// The step's new tokens: q [B, T, Hq, D], k and v [B, T, Hkv, D] at positions len .. len + T - 1 of the
// synthetic sequence (the same for every sequence: they all have the same length).
struct StepInputs {
    std::vector<std::uint16_t> q, k, v;  // as bytes of the storage type (fp32 takes two slots)
    std::vector<std::int64_t> pos;
    TensorView qv, kv, vv;
    void make(const Inputs& in, const Setup& s, std::int64_t len) {
        const std::size_t es = dtype_size(s.dtype) / 2;
        q.assign(static_cast<std::size_t>(s.B * s.T * s.Hq * s.D) * es, 0);
        k.assign(static_cast<std::size_t>(s.B * s.T * s.Hkv * s.D) * es, 0);
        v.assign(k.size(), 0);
        qv = contiguous_view(q.data(), s.dtype, s.B, s.T, s.Hq, s.D);
        kv = contiguous_view(k.data(), s.dtype, s.B, s.T, s.Hkv, s.D);
        vv = contiguous_view(v.data(), s.dtype, s.B, s.T, s.Hkv, s.D);
        pos.resize(static_cast<std::size_t>(s.T));
        for (std::int64_t i = 0; i < s.T; ++i) pos[static_cast<std::size_t>(i)] = len + i;
        in.fill(SynthTensor::q, qv, pos.data());
        in.fill(SynthTensor::k, kv, pos.data());
        in.fill(SynthTensor::v, vv, pos.data());
    }
};

// The rows of o every rank holds against another run's (the baselines against the decode step).
double max_diff(const std::vector<float>& a, const std::vector<float>& b, std::int64_t h0, std::int64_t h1, const Setup& s) {
    double e = 0;
    for (std::int64_t x = 0; x < s.B * s.T; ++x)
        for (std::int64_t h = h0; h < h1; ++h)
            for (std::int64_t d = 0; d < s.D; ++d) {
                const std::size_t i = static_cast<std::size_t>((x * s.Hq + h) * s.D + d);
                const double diff = std::fabs(static_cast<double>(a[i]) - b[i]);
                e = std::max(e, std::isnan(diff) ? std::numeric_limits<double>::infinity() : diff);
            }
    return e;
}

struct Row {
    explicit Row(std::string m) : method(std::move(m)) {}
    std::string method;
    std::vector<double> total, kernel, combine;
    std::uint64_t sent = 0, recv = 0;
    double read_bytes = 0;    // cache bytes this rank read per step
    std::int64_t blocks = 0;  // of the last timed step: the blocks read
    std::int64_t context = 0; // and the positions before its new tokens
    std::string extra;
    // One timed call; communication is what the call spent outside the kernel but in the combine
    // (pass-Q: everything outside the kernel).
    void add(const DecodeStats& st, double read, std::int64_t len = 0) {
        blocks = st.blocks_read;
        context = len;
        total.push_back(st.total_s);
        kernel.push_back(st.kernel_s);
        combine.push_back(st.combine_s > 0 ? st.combine_s : st.total_s - st.kernel_s - st.append_s);
        sent = st.bytes_sent;
        recv = st.bytes_received;
        read_bytes = read;
    }
};

void print_row(const Row& r, const Setup& s) {
    const double med = median(r.total);
    std::printf("  %-18s %10.3f %9.3f %10.3f %10.3f %11.0f %12llu %12llu %10.2f%s\n", r.method.c_str(), 1e3 * med,
                1e3 * p99(r.total), 1e3 * median(r.kernel), 1e3 * median(r.combine),
                med > 0 ? static_cast<double>(s.B * s.T) / med : 0.0, static_cast<unsigned long long>(r.sent),
                static_cast<unsigned long long>(r.recv), median(r.kernel) > 0 ? r.read_bytes / median(r.kernel) / 1e9 : 0.0,
                r.extra.c_str());
}

// Bytes of the cache one call read on this rank: its (page, kv head) blocks, K and V.
double read_bytes(const KvCache& cache, const DecodeStats& st) {
    const KvCacheOptions& o = cache.options();
    const double per_block = static_cast<double>(kernels::kv_page_elems(1, o.head_dim, o.page_tokens)) *
                             static_cast<double>(dtype_size(o.dtype));
    return per_block * static_cast<double>(st.blocks_read);
}

}  // namespace

double triad_bytes_per_s(int threads, double bytes, comm::Communicator* comm) {
    const std::size_t n = static_cast<std::size_t>(std::max(bytes, 3.0 * (64 << 20)) / 24.0);
    std::vector<double> av(n), bv(n), cv(n);
    double* a = av.data();
    const double* b = bv.data();
    const double* c = cv.data();
    const std::int64_t N = static_cast<std::int64_t>(n);
    std::fill(bv.begin(), bv.end(), 1.0);
    std::fill(cv.begin(), cv.end(), 2.0);
    double best = std::numeric_limits<double>::infinity();
    for (int rep = 0; rep < 5; ++rep) {
        if (comm) comm->barrier();
        const auto t0 = Clock::now();
#pragma omp parallel for num_threads(threads) schedule(static)
        for (std::int64_t i = 0; i < N; ++i) a[i] = b[i] + 3.0 * c[i];
        best = std::min(best, since(t0));
    }
    if (a[N / 2] != 7.0) throw Error("triad: wrong result");
    return 24.0 * static_cast<double>(n) / best;
}

int run_decode_bench(const Job& job, comm::Communicator* comm) {
    const Decode& dj = job.decode;
    Setup s;
    s.P = comm ? comm->size() : 1;
    s.rank = comm ? comm->rank() : 0;
    s.B = job.shape.batch;
    s.T = dj.new_tokens;
    s.Hq = job.shape.heads;
    s.Hkv = job.shape.kv_heads ? job.shape.kv_heads : job.shape.heads;
    s.D = job.shape.head_dim;
    s.dtype = job.shape.dtype;
    if (!job.exec.cpu_isa.empty() && job.exec.cpu_isa != "auto") set_cpu_isa(job.exec.cpu_isa);
    const bool root = s.rank == 0;
    const Inputs inputs(job);
    // --cluster: loaded once (the job checked it when it parsed the options).
    const std::optional<ClusterSpec> cluster =
        job.exec.cluster.empty() ? std::nullopt : std::optional<ClusterSpec>(load_cluster(job.exec.cluster));
    int rc = 0;
    for (std::int64_t L : job.sweep.lengths) {
        s.L = L;
        s.cap = L + static_cast<std::int64_t>(dj.steps) * s.T;
        const PatternSpec spec = spec_for_length(job, s.cap);
        const Pattern pat(spec);
        KvCacheOptions co;
        co.batch = s.B;
        co.capacity = s.cap;
        co.kv_heads = s.Hkv;
        co.head_dim = s.D;
        co.dtype = s.dtype;
        co.page_tokens = dj.page_tokens;
        co.placement = dj.placement;
        co.layout = job.exec.layout;
        // What the cache, the prefill's shards and the gathered baseline hold.
        {
            const double cache_bytes = static_cast<double>(KvCache::bytes_for(co, s.P));
            MemoryNeed need;
            need.shards = cache_bytes;
            if (dj.prefill)
                need.shards += static_cast<double>(s.B * (L / s.P + 1) * (2 * s.Hq + 2 * s.Hkv) * s.D * 4);
            if (dj.baselines && root && s.P > 1) need.working = cache_bytes * s.P;  // the gathered copy, at most
            refuse_what_cannot_fit(job, comm, s.cap, need);
        }
        for (int threads : job.sweep.threads) {
            const int nt = threads > 0 ? threads : omp_get_max_threads();
            KvCache cache(comm, co);
            double fill_s = 0;
            const auto tf = Clock::now();
            if (!dj.prefill) {
                for (std::int64_t b = 0; b < s.B; ++b) cache.fill_synth(job.shape.seed, b, L, nt);
            } else {
                const Layout lay(job.exec.layout, L, s.P);
                const std::vector<std::int64_t> pos = lay.positions(s.rank);
                const std::int64_t n = static_cast<std::int64_t>(pos.size());
                const std::size_t es = dtype_size(s.dtype) / 2;
                std::vector<std::uint16_t> q(static_cast<std::size_t>(s.B * n * s.Hq * s.D) * es),
                    k(static_cast<std::size_t>(s.B * n * s.Hkv * s.D) * es), v(k.size()), o(q.size());
                std::vector<float> lse(static_cast<std::size_t>(s.B * s.Hq * n));
                DistForwardArgs fa;
                fa.q = contiguous_view(q.data(), s.dtype, s.B, n, s.Hq, s.D);
                fa.k = contiguous_view(k.data(), s.dtype, s.B, n, s.Hkv, s.D);
                fa.v = contiguous_view(v.data(), s.dtype, s.B, n, s.Hkv, s.D);
                fa.o = contiguous_view(o.data(), s.dtype, s.B, n, s.Hq, s.D);
                fa.lse = lse.data();
                inputs.fill(SynthTensor::q, fa.q, pos.data());
                inputs.fill(SynthTensor::k, fa.k, pos.data());
                inputs.fill(SynthTensor::v, fa.v, pos.data());
                DistOptions dopt = job.exec.dist;
                dopt.threads = nt;
                Plan plan(*comm, pos.data(), pat, PlanShape{s.B, n, s.Hq, s.Hkv, s.D}, dopt);
                plan.forward(fa);
                for (std::int64_t b = 0; b < s.B; ++b) cache.write(b, pos.data(), n, fa.k, fa.v, b);
                cache.sync_lengths();
            }
            if (comm) comm->barrier();
            fill_s = since(tf);

            std::vector<Row> rows;
            for (DecodeCombine c : dj.combines)
                rows.emplace_back(std::string(s.P > 1 ? "decode/" : "decode") + (s.P > 1 ? decode_combine_name(c) : ""));
            // The baselines, alternated with the decode step: pass-Q replays each step's queries (already
            // in the cache) right after it; the gathered cache, after the steps, alternates with replays
            // of the last step through the decode step.
            const bool baselines = dj.baselines && s.P > 1;
            Row ring("pass-q"), replay("decode (replay)"), gath("gathered");
            double baseline_err = 0;
            StepInputs in;
            std::vector<float> o(static_cast<std::size_t>(s.B * s.T * s.Hq * s.D)), lse(static_cast<std::size_t>(s.B * s.Hq * s.T));
            std::vector<float> ob(o.size()), lb(lse.size());
            DecodeArgs again;  // the step's queries, nothing appended
            again.pattern = &pat;
            again.o = ob.data();
            again.lse = lb.data();
            DecodeOptions dopt;
            dopt.threads = nt;
            CheckResult chk;
            // One process: the triad before and after the steps, the better of the two (a neighbour's
            // load on a shared machine lowers one of them, never raises it).
            double triad = comm ? 0.0 : triad_bytes_per_s(nt, static_cast<double>(cache.bytes()));
            Progress progress(job, root);
            progress.begin("decode step");
            for (int step = 0; step < dj.steps; ++step) {
                progress.tick(step, dj.steps);
                const std::int64_t len = cache.length(0);
                in.make(inputs, s, len);
                DecodeArgs a;
                a.q = in.qv;
                a.k = in.kv;
                a.v = in.vv;
                a.pattern = &pat;
                a.o = o.data();
                a.lse = lse.data();
                const std::size_t which = static_cast<std::size_t>(step) % dj.combines.size();
                dopt.combine = dj.combines[which];
                if (comm) comm->barrier();
                const DecodeStats st = decode_step(cache, a, dopt);
                const bool timed = step >= job.sweep.warmup;
                if (timed) rows[which].add(st, read_bytes(cache, st), len);
                if (baselines) {
                    again.q = in.qv;
                    std::int64_t h0 = 0, h1 = 0;
                    comm->barrier();
                    const DecodeStats sr = decode_pass_q(cache, again, dopt, &h0, &h1);
                    if (timed) ring.add(sr, read_bytes(cache, sr));
                    baseline_err = std::max(baseline_err, max_diff(ob, o, h0, h1, s));
                }
                // The step's queries are rows at the sequence's last positions: the bench's fp64 check of
                // sampled query rows over the whole sequence, every sequence and head.
                const bool sampled = step == job.sweep.warmup || step == dj.steps - 1;
                if (job.checks.enabled && sampled && root) {
                    RankRows rr;
                    rr.pos = in.pos.data();
                    rr.S = s.T;
                    rr.o = contiguous_view(o.data(), DType::f32, s.B, s.T, s.Hq, s.D);
                    rr.lse = lse.data();
                    const CheckResult c = check_rows(job, inputs, pat, len + s.T, rr, nt);
                    chk.max_err = std::max(chk.max_err, c.max_err);
                    chk.wrong += c.wrong;
                    chk.values += c.values;
                }
            }
            if (baselines) {
                rows.push_back(ring);
                comm->barrier();
                const auto tg = Clock::now();
                const std::unique_ptr<KvCache> one = cache.gathered(0);
                const double gather_s = since(tg);
                dopt.combine = dj.combines[0];
                for (int it = 0; it < job.sweep.iters; ++it) {
                    comm->barrier();
                    const DecodeStats sr = decode_step(cache, again, dopt);
                    replay.add(sr, read_bytes(cache, sr));
                    if (one) {
                        const DecodeStats sg = decode_step(*one, again, dopt);
                        gath.add(sg, read_bytes(*one, sg));
                        baseline_err = std::max(baseline_err, max_diff(ob, o, 0, s.Hq, s));
                    }
                }
                comm->barrier();
                std::ostringstream ex;
                ex << "  (gather " << 1e3 * gather_s << " ms, once)";
                gath.extra = ex.str();
                rows.push_back(replay);
                rows.push_back(gath);
                comm->all_reduce_max(&baseline_err, 1);
            }
            // Only rank 0 checks; every rank returns its verdict.
            std::int64_t bad = chk.wrong + (baseline_err > check_tolerance(DType::f32) ? 1 : 0);
            if (comm) comm->all_reduce_sum(&bad, 1);
            if (bad) rc = 1;
            if (!comm) triad = std::max(triad, triad_bytes_per_s(nt, static_cast<double>(cache.bytes())));
            // The cost model (--cluster): each combine's step against its prediction, and every rank's
            // blocks read and combine bytes against the model's count (a mismatch is a wrong result).
            std::vector<std::string> model_lines;
            if (cluster) {
                const ClusterSpec& cl = *cluster;
                for (std::size_t w = 0; w < dj.combines.size(); ++w) {
                    const Row& r = rows[w];
                    if (r.total.empty()) continue;
                    DecodeModelJob mj;
                    mj.batch = s.B, mj.context = r.context, mj.new_tokens = s.T, mj.heads = s.Hq, mj.kv_heads = s.Hkv;
                    mj.head_dim = s.D, mj.page_tokens = co.page_tokens, mj.dtype = s.dtype, mj.placement = dj.placement;
                    mj.layout = job.exec.layout, mj.capacity = s.cap, mj.combine = dj.combines[w], mj.ranks = s.P;
                    const std::vector<DecodeRankCost> costs = decode_costs(mj, pat);
                    const DecodeRankCost& mine = costs[static_cast<std::size_t>(s.rank)];
                    std::int64_t off = mine.blocks != r.blocks || mine.sent != r.sent || mine.received != r.recv ? 1 : 0;
                    if (off)
                        std::printf("#  rank %d read %lld blocks and the combine sent %llu and received %llu bytes; the cost "
                                    "model counts %lld, %llu and %llu\n",
                                    s.rank, static_cast<long long>(r.blocks), static_cast<unsigned long long>(r.sent),
                                    static_cast<unsigned long long>(r.recv), static_cast<long long>(mine.blocks),
                                    static_cast<unsigned long long>(mine.sent), static_cast<unsigned long long>(mine.received));
                    if (comm) comm->all_reduce_sum(&off, 1);
                    if (off) rc = 1;
                    const DecodePrediction pd = predict_decode(cl, mj, costs);
                    char line[512];
                    std::snprintf(line, sizeof(line),
                                  "# cost model on %s: %s %.3f ms a step predicted (kernel %.3f, combine %.3f), %.3f "
                                  "measured (kernel %.3f): measured / predicted %.3f; blocks and combine bytes: %s",
                                  cl.name.c_str(), r.method.c_str(), 1e3 * pd.step_s(), 1e3 * pd.kernel_s,
                                  1e3 * pd.combine_s, 1e3 * median(r.total), 1e3 * median(r.kernel),
                                  median(r.total) / pd.step_s(),
                                  off ? "ranks differ from the model (counted as wrong)" : "every rank's equal the model's");
                    model_lines.emplace_back(line);
                }
            }
            if (!root) continue;
            std::printf("# longattn-bench decode ranks=%d fill=%s%s placement=%s dtype=%s batch=%lld heads=%lld kv_heads=%lld "
                        "head_dim=%lld page_tokens=%lld threads=%d cpu_isa=%s\n",
                        s.P, dj.prefill ? "prefill/" : "synth", dj.prefill ? strategy_name(job.exec.dist.strategy) : "",
                        kv_placement_name(dj.placement), std::string(dtype_name(s.dtype)).c_str(),
                        static_cast<long long>(s.B), static_cast<long long>(s.Hq), static_cast<long long>(s.Hkv),
                        static_cast<long long>(s.D), static_cast<long long>(co.page_tokens), nt, cpu_isa().c_str());
            std::printf("# pattern %s; context %lld tokens per sequence, then %d steps, %lld new tokens each (%d untimed); "
                        "cache filled in %.1f ms\n",
                        pat.describe().c_str(), static_cast<long long>(L), dj.steps, static_cast<long long>(s.T),
                        job.sweep.warmup, 1e3 * fill_s);
            std::printf("# cache on rank 0: %.1f MiB (%lld of %lld pages used, %lld tokens)\n",
                        static_cast<double>(cache.bytes()) / (1 << 20), static_cast<long long>(cache.pages_used()),
                        static_cast<long long>(cache.pages_total()), static_cast<long long>(cache.tokens_held()));
            std::printf("#   %-18s %10s %9s %10s %10s %11s %12s %12s %10s\n", "method", "step_ms", "p99_ms", "kernel_ms",
                        "comm_ms", "tokens/s", "sent_B", "recv_B", "read_GB/s");
            for (const Row& r : rows) print_row(r, s);
            for (const std::string& l : model_lines) std::printf("%s\n", l.c_str());
            if (!comm)
                std::printf("# triad (STREAM, %d threads, same run): %.2f GB/s; the decode kernel read the cache at %.0f%% of it\n",
                            nt, triad / 1e9,
                            median(rows[0].kernel) > 0 ? 100.0 * rows[0].read_bytes / median(rows[0].kernel) / triad : 0.0);
            if (baselines)
                std::printf("# baselines, alternated with the decode step: pass-q takes %.2fx the time of the steps it "
                            "follows, the gathered cache %.2fx the replays it alternates with; max |diff| against the "
                            "decode step %.3g (%s)\n",
                            median(ring.total) / median(rows[0].total), median(gath.total) / median(replay.total),
                            baseline_err, baseline_err > check_tolerance(DType::f32) ? "FAILED" : "OK");
            if (job.checks.enabled) {
                std::printf("# Check (fp64 over the whole sequence; steps %d and %d, every sequence and head, %lld values): "
                            "max_err %.3g, wrong %lld: %s\n",
                            job.sweep.warmup, dj.steps - 1, static_cast<long long>(chk.values), chk.max_err,
                            static_cast<long long>(chk.wrong), chk.wrong == 0 ? "PASSED" : "FAILED");
            }
            std::fflush(stdout);
        }
    }
    return rc;
}

}  // namespace longattn::bench
