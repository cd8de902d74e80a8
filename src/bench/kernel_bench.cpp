// Single-process kernel benchmark: the fused CPU flash kernels against this CPU's FMA peak and an
// unfused GEMM-softmax-GEMM baseline built from the same tile products, with a sampled fp64 check.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
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
#include "kernels/attention.hpp"
#include "kernels/backend.hpp"
#include "kernels/cpu/baseline.hpp"
#include "longattn/cost_model.hpp"
#include "longattn/cpu_isa.hpp"

namespace longattn::bench {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// One attention problem of the sweep (as tests/unit/testing.hpp's Problem): its tensors, owned.
struct Problem {
    std::int64_t B, L, H, Hkv, D;
    DType dtype;
    std::vector<std::uint8_t> q, k, v, o, dout;
    std::vector<float> lse, dq, dk, dv;
    std::vector<std::int64_t> pos;
    TensorView qv, kv, vv, ov, dov, dqv, dkv, dvv;

    Problem(const Job& job, const Inputs& in, std::int64_t L_, bool grads)
        : B(job.shape.batch), L(L_), H(job.shape.heads), Hkv(job.shape.kv_heads), D(job.shape.head_dim),
          dtype(job.shape.dtype) {
        const std::size_t es = dtype_size(dtype);
        auto alloc = [&](std::vector<std::uint8_t>& buf, std::int64_t heads) {
            buf.assign(static_cast<std::size_t>(B * L * heads * D) * es, 0);
            return contiguous_view(buf.data(), dtype, B, L, heads, D);
        };
        qv = alloc(q, H);
        kv = alloc(k, Hkv);
        vv = alloc(v, Hkv);
        ov = alloc(o, H);
        lse.assign(static_cast<std::size_t>(B * H * L), 0.0f);
        pos.resize(static_cast<std::size_t>(L));
        for (std::int64_t i = 0; i < L; ++i) pos[static_cast<std::size_t>(i)] = i;
        in.fill(SynthTensor::q, qv, pos.data());
        in.fill(SynthTensor::k, kv, pos.data());
        in.fill(SynthTensor::v, vv, pos.data());
        if (!grads) return;
        dov = alloc(dout, H);
        in.fill(SynthTensor::dout, dov, pos.data());
        dq.assign(static_cast<std::size_t>(B * L * H * D), 0.0f);
        dk.assign(static_cast<std::size_t>(B * L * Hkv * D), 0.0f);
        dv.assign(dk.size(), 0.0f);
        dqv = contiguous_view(dq.data(), DType::f32, B, L, H, D);
        dkv = contiguous_view(dk.data(), DType::f32, B, L, Hkv, D);
        dvv = contiguous_view(dv.data(), DType::f32, B, L, Hkv, D);
    }
    // --device cuda: the kernels read and write device copies (mirrors: q k v o lse [dout dq dk dv]).
    std::vector<kernels::DeviceCopy> mirrors;
    void to_device(Device d) {
        mirrors.reserve(9);
        for (const TensorView& t : {qv, kv, vv, ov, contiguous_view(lse.data(), DType::f32, B, H, L, 1)})
            mirrors.emplace_back(d, t);
        if (!dq.empty())
            for (const TensorView& t : {dov, dqv, dkv, dvv}) mirrors.emplace_back(d, t);
    }
    const TensorView& on(std::size_t i, const TensorView& host) const { return mirrors.empty() ? host : mirrors[i].view(); }
    void results_to_host() const {
        for (std::size_t i : {3, 4, 6, 7, 8})
            if (i < mirrors.size()) mirrors[i].to_host();
    }
    kernels::FwdParams fwd(const Pattern& p, int threads) {
        kernels::FwdParams f;
        f.q = on(0, qv), f.k = on(1, kv), f.v = on(2, vv), f.o = on(3, ov);
        f.lse = mirrors.empty() ? lse.data() : mirrors[4].view().ptr<float>();
        f.q_pos = f.k_pos = pos.data();
        f.pattern = &p;
        f.threads = threads;
        return f;
    }
    kernels::BwdParams bwd(const Pattern& p, int threads) {
        kernels::BwdParams b;
        b.q = on(0, qv), b.k = on(1, kv), b.v = on(2, vv), b.o = on(3, ov), b.dout = on(5, dov);
        b.lse = mirrors.empty() ? lse.data() : mirrors[4].view().ptr<float>();
        b.dq = on(6, dqv), b.dk = on(7, dkv), b.dv = on(8, dvv);
        b.q_pos = b.k_pos = pos.data();
        b.pattern = &p;
        b.threads = threads;
        return b;
    }
    RankRows rows() const {
        RankRows r;
        r.pos = pos.data(), r.S = L, r.o = ov, r.lse = lse.data();
        if (!dq.empty()) r.dq = dqv, r.dk = dkv, r.dv = dvv;
        return r;
    }
    float at(const TensorView& t, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) const {
        return load_as_f32(t.data, t.dtype, t.offset(b, s, h, d));
    }
};

// Median of n timed runs after the warmup.
template <class F>
double time_median(const Job& job, F&& run, Progress* progress = nullptr) {
    const int total = job.sweep.warmup + job.sweep.iters;
    for (int i = 0; i < job.sweep.warmup; ++i) {
        run();
        if (progress) progress->tick(i + 1, total);
    }
    std::vector<double> t;
    for (int i = 0; i < job.sweep.iters; ++i) {
        const auto t0 = Clock::now();
        run();
        t.push_back(seconds_since(t0));
        if (progress) progress->tick(job.sweep.warmup + i + 1, total);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

}  // namespace

int run_kernel_bench(const Job& job) {
    if (job.exec.cpu_isa != "auto") set_cpu_isa(job.exec.cpu_isa);
    refuse_what_cannot_fit(job, nullptr, job.sweep.lengths.back(),
                           tensor_memory(job, job.sweep.lengths.back(), job.sweep.lengths.back(), 1));
    const double peak = job.checks.peak ? kernels::measure_fma_peak() : 0.0;
    const bool do_bwd = job.sweep.mode != Mode::fwd;
    const Inputs in(job);
    OutputSet out(job, nullptr);
    Report rep(job, true);
    Progress progress(job, true);
    {
        std::ostringstream os;
        os << "longattn-bench kernel mode=" << mode_name(job.sweep.mode) << " dtype=" << dtype_name(job.shape.dtype)
           << " batch=" << job.shape.batch << " heads=" << job.shape.heads << " kv_heads=" << job.shape.kv_heads
           << " head_dim=" << job.shape.head_dim << " cpu_isa=" << cpu_isa();
        rep.note(os.str());
    }
    rep.note("pattern " + Pattern(spec_for_length(job, job.sweep.lengths.back())).describe() + ", documents " +
             job.pattern.docs.describe() + ", inputs " + (in.loaded() ? job.io.load_dir : "synthetic") +
             "; median of " + std::to_string(job.sweep.iters) + " iterations after " +
             std::to_string(job.sweep.warmup) + " warmup");
    if (job.checks.peak) {
        char line[96];
        std::snprintf(line, sizeof(line), "FMA peak of one core (measured): %.1f GFLOP/s fp32", peak);
        rep.note(line);
    }
    rep.note("FLOPs: fwd 4*D*pairs, bwd 2.5x that (pairs counted exactly from the pattern); unfused: GEMM, softmax, "
             "GEMM with the same products and exp, speedup = unfused_ms / fwd_ms");
    rep.columns({{"tokens", 10, -1}, {"thr", 4, -1}, {"density", 8, 5}, {"fwd_ms", 10, 2}, {"fwd_GF/s", 9, 1},
                 {"fwd_%peak", 9, 1}, {"bwd_ms", 10, 2}, {"bwd_GF/s", 9, 1}, {"bwd_%peak", 9, 1}, {"unfused_ms", 10, 2},
                 {"speedup", 7, 2}, {"max_err", 10, 2, true}, {"#wrong", 6, -1}});
    std::int64_t wrong_total = 0;
    for (std::int64_t L : job.sweep.lengths) {
        const Pattern pat(spec_for_length(job, L));
        Problem pr(job, in, L, do_bwd);
        if (job.exec.device == Device::cuda) pr.to_device(job.exec.device);
        const double pairs = static_cast<double>(pat.count_allowed(0, L, 0, L));
        const double flops = 4.0 * static_cast<double>(job.shape.head_dim) * pairs *
                             static_cast<double>(job.shape.batch * job.shape.heads);
        for (int thr : job.sweep.threads) {
            const int t = thr > 0 ? thr : omp_get_max_threads();
            double t_bwd = 0, t_base = 0;
            // The forward always runs: the backward needs its O and LSE.
            const std::string at = std::to_string(L) + " tokens, threads " + std::to_string(t) + ", ";
            progress.begin(at + "forward");
            const double t_fwd =
                time_median(job, [&] { const auto f = pr.fwd(pat, t); kernels::backend_of(f.q).forward(f); }, &progress);
            progress.begin(at + "backward");
            if (do_bwd)
                t_bwd = time_median(job, [&] { const auto b = pr.bwd(pat, t); kernels::backend_of(b.q).backward(b); }, &progress);
            if (job.checks.baseline) {
                t_base = time_median(job, [&] { kernels::unfused_forward_cpu(pr.fwd(pat, t)); });
                kernels::flash_forward_cpu(pr.fwd(pat, t));  // the check reads the fused result
            }
            pr.results_to_host();
            if (job.faults.corrupt)
                store_from_f32(pr.ov.data, pr.dtype, 0, load_as_f32(pr.ov.data, pr.dtype, 0) + 0.5f);
            RankRows rows = pr.rows();
            std::vector<float> delta;
            CheckResult c;
            if (job.checks.enabled) {
                if (do_bwd) {
                    delta = row_delta(pr.ov, pr.dov);
                    rows.lse_all = pr.lse.data();
                    rows.delta_all = delta.data();
                }
                c = check_rows(job, in, pat, L, rows, t);
            }
            wrong_total += c.wrong;
            if (!job.io.save_dir.empty()) save_outputs(job, L, rows, nullptr, out);
            auto pct = [&](double gf) { return peak > 0 ? 100.0 * gf / (peak * t) : 0.0; };
            const double gf_fwd = flops / t_fwd * 1e-9, gf_bwd = t_bwd > 0 ? 2.5 * flops / t_bwd * 1e-9 : 0;
            rep.row({double(L), double(t), pairs / (double(L) * double(L)), t_fwd * 1e3, gf_fwd, pct(gf_fwd), t_bwd * 1e3,
                     gf_bwd, pct(gf_bwd), t_base * 1e3, t_base > 0 ? t_base / t_fwd : 0.0, c.max_err, double(c.wrong)});
        }
    }
    const int rc = rep.finish(wrong_total, out);
    out.publish();
    return rc;
}

int run_calibrate(const Job& job, comm::Communicator* comm) {
    if (job.exec.cpu_isa != "auto") set_cpu_isa(job.exec.cpu_isa);
    const int P = comm ? comm->size() : 1, me = comm ? comm->rank() : 0;
    const std::int64_t L = job.sweep.lengths.back();
    const int t = job.sweep.threads.front() > 0 ? job.sweep.threads.front() : omp_get_max_threads();
    // Two patterns: the job's, and it with a causal window of L / 16 keys (many PARTIAL tiles): the
    // throughput on FULL tiles and the extra cost of a masked pair, each direction, from the two times.
    struct Measured {
        double fwd = 0, bwd = 0;
        RankCost c;
    } m[2];
    if (me == 0) {  // the kernels on rank 0 while the others wait
        refuse_what_cannot_fit(job, nullptr, L, tensor_memory(job, L, L, 1));
        const Inputs in(job);
        Problem pr(job, in, L, true);
        ModelJob one;
        one.tokens = L, one.batch = job.shape.batch, one.heads = job.shape.heads, one.kv_heads = job.shape.kv_heads;
        one.head_dim = job.shape.head_dim, one.dtype = job.shape.dtype, one.ranks = 1;
        for (int i = 0; i < 2; ++i) {
            PatternSpec spec = spec_for_length(job, L);
            if (i == 1) spec.causal = true, spec.window = Window{std::max<std::int64_t>(L / 16, 1), 0};
            const Pattern pat(spec);
            m[i].c = model_costs(one, pat).front();
            m[i].fwd = time_median(job, [&] { kernels::flash_forward_cpu(pr.fwd(pat, t)); });
            m[i].bwd = time_median(job, [&] { kernels::flash_backward_cpu(pr.bwd(pat, t)); });
        }
    }
    // t_i = k (W_i + x P_i): W the pairs computed, P those of PARTIAL tiles, x the extra cost of a masked
    // pair (not below 0), k the seconds per pair of a FULL tile.
    auto fit = [&](double t0, double w0, double p0, double t1, double w1, double p1, double& k, double& x) {
        const double r = t1 / t0;
        x = std::abs(p1 - r * p0) > 1e-9 * w0 ? std::max(0.0, (r * w0 - w1) / (p1 - r * p0)) : 0.0;
        k = t0 / (w0 + x * p0);
    };
    double kf = 0, xf = 0, kb = 0, xb = 0;
    if (me == 0) {
        fit(m[0].fwd, m[0].c.fwd_work, m[0].c.fwd_partial, m[1].fwd, m[1].c.fwd_work, m[1].c.fwd_partial, kf, xf);
        fit(m[0].bwd, m[0].c.bwd_work, m[0].c.bwd_partial, m[1].bwd, m[1].c.bwd_work, m[1].c.bwd_partial, kb, xb);
    }
    // The links per message size, in the nccl-tests spirit: a ping-pong between ranks 0 and 1 (half the
    // best round trip) and an all-to-all among all the ranks as Ulysses posts it (each sends `bytes` to
    // every other; the best over repetitions of the slowest rank's time). Latency: the smallest size's
    // time; bandwidth: the bytes a rank sends over the largest size's time less that latency.
    struct LinkRow {
        std::size_t bytes;  // per message (ping-pong), per peer (all-to-all)
        double s;
    };
    std::vector<LinkRow> pp, a2a;
    double lat = 0, bw = 0, a2a_lat = 0, a2a_bw = 0;
    if (P > 1) {
        constexpr std::size_t kMost = std::size_t{64} << 20;
        std::vector<char> buf(kMost), got(kMost);
        auto best_of = [&](int reps, auto&& once) {
            double best = 1e30;
            for (int i = 0; i < reps; ++i) {
                comm->barrier();
                const auto t0 = Clock::now();
                once();
                double t = seconds_since(t0);
                comm->all_reduce_max(&t, 1);
                best = std::min(best, t);
            }
            return best;
        };
        for (std::size_t bytes : {std::size_t{8}, std::size_t{4096}, std::size_t{256} << 10, std::size_t{4} << 20, kMost})
            pp.push_back({bytes, best_of(bytes < (std::size_t{1} << 20) ? 50 : 5, [&] {
                              if (me > 1) return;
                              comm::Request a = me == 0 ? comm->isend(buf.data(), bytes, 1, 77) : comm->irecv(got.data(), bytes, 0, 77);
                              comm->flush();
                              comm->wait(a);
                              comm::Request b = me == 0 ? comm->irecv(got.data(), bytes, 1, 78) : comm->isend(buf.data(), bytes, 0, 78);
                              comm->flush();
                              comm->wait(b);
                          }) / 2});
        const std::size_t per_peer = std::max<std::size_t>(kMost / static_cast<std::size_t>(P - 1) / 4096 * 4096, 8);
        std::vector<comm::Request> rq;
        for (std::size_t bytes : {std::size_t{8}, std::size_t{4096}, std::size_t{256} << 10, std::size_t{4} << 20, per_peer}) {
            if (bytes > per_peer || (!a2a.empty() && bytes <= a2a.back().bytes)) continue;
            a2a.push_back({bytes, best_of(bytes < (std::size_t{1} << 20) ? 50 : 5, [&] {
                               rq.clear();
                               for (int j = 1; j < P; ++j) {
                                   const std::size_t off = static_cast<std::size_t>(j - 1) * bytes;
                                   rq.push_back(comm->irecv(got.data() + off, bytes, (me - j + P) % P, 79));
                                   rq.push_back(comm->isend(buf.data() + off, bytes, (me + j) % P, 79));
                               }
                               comm->flush();
                               for (comm::Request& r : rq) comm->wait(r);
                           })});
        }
        lat = pp.front().s;
        bw = static_cast<double>(pp.back().bytes) / std::max(pp.back().s - lat, 1e-12);
        a2a_lat = a2a.front().s;
        a2a_bw = static_cast<double>(a2a.back().bytes * static_cast<std::size_t>(P - 1)) /
                 std::max(a2a.back().s - a2a_lat, 1e-12);
    }
    // Memory bandwidth: the triad on every rank at once over 512 MiB each (far past the caches), the
    // slowest rank's (what the decode model reads a cache at).
    double mem_bw = triad_bytes_per_s(t, 512.0 * 1048576.0, comm);
    if (comm) {
        double neg = -mem_bw;
        comm->all_reduce_max(&neg, 1);
        mem_bw = -neg;
    }
    // The decode kernel on every rank at once (as the ranks of a decode step run it), the slowest rank's
    // median: one new token per sequence attending a cache of the job's shape of at least 256 MiB per
    // rank (a stream from memory, as a long context is), causal.
    double dec_s = 0, dec_work = 0, dec_bytes = 0;
    {
        const std::int64_t Hkv = job.shape.kv_heads ? job.shape.kv_heads : job.shape.heads, D = job.shape.head_dim;
        const double per_token = double(job.shape.batch * kernels::kv_page_elems(Hkv, D, 1)) * double(dtype_size(job.shape.dtype));
        const std::int64_t ctx = std::max<std::int64_t>(L, static_cast<std::int64_t>(256.0 * 1048576.0 / per_token));
        KvCacheOptions co;
        co.batch = job.shape.batch, co.capacity = ctx, co.kv_heads = Hkv, co.head_dim = D, co.dtype = job.shape.dtype;
        KvCache cache(nullptr, co);
        for (std::int64_t b = 0; b < co.batch; ++b) cache.fill_synth(job.shape.seed, b, ctx, t);
        std::vector<float> q(static_cast<std::size_t>(co.batch * job.shape.heads * D), 0.01f), o(q.size()),
            lse(static_cast<std::size_t>(co.batch * job.shape.heads));
        PatternSpec spec;
        spec.causal = true;
        const Pattern pat(spec);
        DecodeArgs a;
        a.q = contiguous_view(q.data(), DType::f32, co.batch, 1, job.shape.heads, D);
        a.pattern = &pat, a.o = o.data(), a.lse = lse.data();
        DecodeOptions dopt;
        dopt.threads = t;
        std::vector<double> times;
        for (int i = 0; i < job.sweep.warmup + job.sweep.iters; ++i) {
            if (comm) comm->barrier();
            const auto t0 = Clock::now();
            (void)decode_step(cache, a, dopt);
            if (i >= job.sweep.warmup) times.push_back(seconds_since(t0));
        }
        std::sort(times.begin(), times.end());
        dec_s = times[times.size() / 2];
        if (comm) comm->all_reduce_max(&dec_s, 1);
        DecodeModelJob dm;
        dm.batch = co.batch, dm.context = ctx - 1, dm.new_tokens = 1, dm.heads = job.shape.heads, dm.kv_heads = Hkv;
        dm.head_dim = D, dm.page_tokens = co.page_tokens, dm.dtype = co.dtype;
        const DecodeRankCost dc = decode_costs(dm, pat).front();
        dec_work = dc.work * 4.0 * double(D), dec_bytes = double(dc.read_bytes);
    }
    if (comm) comm->barrier();
    if (me != 0) return 0;
    const double D = static_cast<double>(job.shape.head_dim);
    std::printf("# longattn-bench --mode calibrate on %d rank%s, %s: kernels at %lld tokens, %lld heads, D=%lld, %s, pattern "
                "%s, %d thread%s per rank (median of %d); links by ping-pong between ranks 0 and 1 and by all-to-all\n",
                P, P > 1 ? "s" : "", cpu_isa().c_str(), static_cast<long long>(L), static_cast<long long>(job.shape.heads),
                static_cast<long long>(job.shape.head_dim), std::string(dtype_name(job.shape.dtype)).c_str(),
                Pattern(spec_for_length(job, L)).describe().c_str(), t, t > 1 ? "s" : "", job.sweep.iters);
    for (int i = 0; i < 2; ++i)
        std::printf("# %s: forward %.2f ms, backward %.2f ms; %.0f pairs allowed; the tiles hold %.0f forward (%.0f in "
                    "PARTIAL tiles), %.0f backward (%.0f)\n",
                    i == 0 ? "the pattern" : "a causal window of L/16", m[i].fwd * 1e3, m[i].bwd * 1e3, m[i].c.pairs,
                    m[i].c.fwd_work, m[i].c.fwd_partial, m[i].c.bwd_work, m[i].c.bwd_partial);
    std::printf("[cluster]\nname = this machine, %d rank%s of %d thread%s\nnodes = 1\ndevices_per_node = %d\n\n", P,
                P > 1 ? "s" : "", t, t > 1 ? "s" : "", P);
    if (P > 1) {
        std::printf("[intra]\n# ping-pong between ranks 0 and 1, half the round trip:");
        for (const LinkRow& r : pp)
            std::printf(" %zu B %.2f us (%.3f GB/s)%s", r.bytes, r.s * 1e6, double(r.bytes) / r.s * 1e-9, &r == &pp.back() ? "" : ",");
        std::printf("\nbandwidth_GBps = %.3f\nlatency_us = %.2f\n# all-to-all of %d ranks, the slowest rank, per peer:", bw * 1e-9,
                    lat * 1e6, P);
        for (const LinkRow& r : a2a)
            std::printf(" %zu B %.2f us (%.3f GB/s a rank sends)%s", r.bytes, r.s * 1e6,
                        double(r.bytes) * double(P - 1) / r.s * 1e-9, &r == &a2a.back() ? "" : ",");
        std::printf("\nalltoall_bandwidth_GBps = %.3f\nalltoall_latency_us = %.2f\n\n", a2a_bw * 1e-9, a2a_lat * 1e6);
    }
    std::printf("[device]\nfwd_tflops = %.5f\nbwd_tflops = %.5f\nfwd_partial_extra = %.4f\nbwd_partial_extra = %.4f\n"
                "# STREAM triad, every rank at once, the slowest\nmemory_bandwidth_GBps = %.2f\n"
                "# the decode kernel, every rank at once, the slowest: %.0f MB of cache in %.3f ms (%.1f GB/s)\n"
                "decode_tflops = %.5f\n",
                4 * D / kf * 1e-12, 10 * D / kb * 1e-12, xf, xb, mem_bw * 1e-9, dec_bytes / 1e6, dec_s * 1e3,
                dec_bytes / dec_s * 1e-9, dec_work / dec_s * 1e-12);
    std::fflush(stdout);
    return 0;
}

}  // namespace longattn::bench
