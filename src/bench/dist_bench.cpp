// Distributed benchmark (run under mpirun): one sequence sharded by a layout over the ranks, the
// chosen strategy forward (and backward), per-rank kernel time, communication wait, bytes sent and
// memory, and a sampled fp64 check of this rank's rows regenerated from the counter-based inputs.
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "bench/bench.hpp"
#include "comm/communicator.hpp"
#include "longattn/distributed.hpp"
#include "longattn/layout.hpp"
#include "longattn/synth.hpp"

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
    TensorView qv, kv, vv, ov, dov;

    Shard(const Job& job, std::vector<std::int64_t> p, bool grads)
        : B(job.batch), S(static_cast<std::int64_t>(p.size())), H(job.heads), Hkv(job.kv_heads), D(job.head_dim),
          dtype(job.dtype), pos(std::move(p)) {
        const std::size_t es = dtype_size(dtype);
        auto make = [&](std::vector<unsigned char>& buf, std::int64_t heads, SynthTensor t, bool fill) {
            buf.assign(static_cast<std::size_t>(B * S * heads * D) * es, 0);
            TensorView v = contiguous_view(buf.data(), dtype, B, S, heads, D);
            if (fill) fill_synth(v, job.seed, t, pos.data());
            return v;
        };
        qv = make(q, H, SynthTensor::q, true);
        kv = make(k, Hkv, SynthTensor::k, true);
        vv = make(v, Hkv, SynthTensor::v, true);
        ov = make(o, H, SynthTensor::q, false);
        lse.assign(static_cast<std::size_t>(B * H * S), 0.0f);
        if (grads) {
            dov = make(dout, H, SynthTensor::dout, true);
            dq.assign(static_cast<std::size_t>(B * S * H * D), 0.0f);
            dk.assign(static_cast<std::size_t>(B * S * Hkv * D), 0.0f);
            dv.assign(dk.size(), 0.0f);
        }
    }
    // Bytes of this rank's Q, K, V, O shards plus two K/V buffers: the memory the ring cannot avoid.
    double base_bytes() const {
        const double es = static_cast<double>(dtype_size(dtype));
        const double qo = 2.0 * double(B * S * H * D) * es, kvb = 2.0 * double(B * S * Hkv * D) * es;
        return qo + kvb + 2.0 * kvb;
    }
};

// fp64 reference of a few of this rank's query rows: O and LSE, regenerating every key from the
// counter-based generator.
std::pair<double, std::int64_t> check_rows(const Job& job, const Shard& sh, const Pattern& pat, std::int64_t N) {
    const double scale = pat.softmax_scale(sh.D), cap = pat.spec().softcap;
    const std::int64_t G = sh.H / sh.Hkv;
    const double tol = job.dtype == DType::f32 ? 1.0 / 8192 : job.dtype == DType::bf16 ? 1.0 / 128 : 1.0 / 1024;
    double max_err = 0;
    std::int64_t wrong = 0;
    std::vector<std::int64_t> rows;
    for (int r = 0; r < job.check_rows && sh.S > 0; ++r) rows.push_back(std::min(sh.S - 1, r * sh.S / job.check_rows));
    auto rnd = [&](double x) { return static_cast<double>(round_to(job.dtype, static_cast<float>(x))); };
    std::vector<double> kk(static_cast<std::size_t>(N * sh.D)), vv(kk.size());
    for (std::int64_t b = 0; b < sh.B; ++b)
        for (std::int64_t h = 0; h < sh.H; ++h) {
            for (std::int64_t j = 0; j < N; ++j)
                for (std::int64_t d = 0; d < sh.D; ++d) {
                    kk[static_cast<std::size_t>(j * sh.D + d)] = rnd(synth_value(job.seed, SynthTensor::k, b, j, h / G, d));
                    vv[static_cast<std::size_t>(j * sh.D + d)] = rnd(synth_value(job.seed, SynthTensor::v, b, j, h / G, d));
                }
#pragma omp parallel for schedule(dynamic) reduction(max : max_err) reduction(+ : wrong)
            for (std::size_t ri = 0; ri < rows.size(); ++ri) {
                const std::int64_t i = rows[ri], qp = sh.pos[static_cast<std::size_t>(i)];
                std::vector<double> q(static_cast<std::size_t>(sh.D)), s(static_cast<std::size_t>(N), -INFINITY),
                    o(static_cast<std::size_t>(sh.D), 0.0);
                for (std::int64_t d = 0; d < sh.D; ++d) q[d] = load_as_f32(sh.qv.data, sh.dtype, sh.qv.offset(b, i, h, d));
                double mx = -INFINITY;
                for (std::int64_t j = 0; j < N; ++j) {
                    if (!pat.allowed(qp, j)) continue;
                    double x = 0;
                    for (std::int64_t d = 0; d < sh.D; ++d) x += q[d] * kk[static_cast<std::size_t>(j * sh.D + d)];
                    x *= scale;
                    if (cap > 0) x = cap * std::tanh(x / cap);
                    if (pat.has_alibi()) x -= pat.alibi_slope(h) * std::fabs(double(qp - j));
                    s[j] = x;
                    mx = std::max(mx, x);
                }
                double sum = 0;
                for (std::int64_t j = 0; j < N; ++j)
                    if (s[j] > -INFINITY) sum += std::exp(s[j] - mx);
                const double lse = mx == -INFINITY ? -INFINITY : mx + std::log(sum);
                for (std::int64_t j = 0; j < N; ++j)
                    if (s[j] > -INFINITY)
                        for (std::int64_t d = 0; d < sh.D; ++d) o[d] += std::exp(s[j] - lse) * vv[static_cast<std::size_t>(j * sh.D + d)];
                auto cmp = [&](double want, double got) {
                    const double e = std::isinf(want) && want == got ? 0.0 : std::fabs(want - got);
                    max_err = std::max(max_err, e);
                    wrong += !(e <= tol * std::max(1.0, std::fabs(want)));
                };
                cmp(lse, sh.lse[static_cast<std::size_t>((b * sh.H + h) * sh.S + i)]);
                for (std::int64_t d = 0; d < sh.D; ++d) cmp(o[d], load_as_f32(sh.ov.data, sh.dtype, sh.ov.offset(b, i, h, d)));
            }
        }
    return {max_err, wrong};
}

}  // namespace

int run_dist_bench(const Job& job, comm::Communicator& comm) {
    const int P = comm.size(), me = comm.rank();
    const bool grads = job.mode != Mode::fwd;
    const double rss0 = peak_rss_mb();
    if (me == 0) {
        std::printf("# longattn-bench distributed ranks=%d strategy=%s layout=%s mode=%s dtype=%s batch=%lld heads=%lld "
                    "kv_heads=%lld head_dim=%lld threads/rank=%d\n",
                    P, strategy_name(job.dist.strategy), layout_name(job.layout),
                    job.mode == Mode::fwd ? "fwd" : job.mode == Mode::bwd ? "bwd" : "fwd+bwd",
                    std::string(dtype_name(job.dtype)).c_str(), static_cast<long long>(job.batch),
                    static_cast<long long>(job.heads), static_cast<long long>(job.kv_heads),
                    static_cast<long long>(job.head_dim), job.dist.threads);
        std::printf("# time: median over %d iterations of the slowest rank; comm%%: time blocked on transfers / wall; "
                    "mem: peak RSS growth / (Q,K,V,O shards + two K/V buffers)\n", job.iters);
        std::printf("#%9s %9s %8s %10s %9s %10s %7s %9s %7s %10s %6s\n", "tokens", "per_rank", "density", "time_ms",
                    "TFLOP/s", "MB_sent", "comm%", "peak_MB", "mem_x", "max_err", "#wrong");
    }
    std::int64_t wrong_total = 0;
    for (std::int64_t N : job.lengths) {
        PatternSpec spec = spec_for_length(job, N);
        const Pattern pat(spec);
        const Layout layout(job.layout, N, P);
        Shard sh(job, layout.positions(me), grads);
        // Exact work of this rank: allowed pairs of its queries against the whole sequence.
        std::int64_t work = 0;
        for (std::int64_t p : sh.pos) work += pat.count_allowed(p, p + 1, 0, N);
        DistForwardArgs fa;
        fa.q = sh.qv, fa.k = sh.kv, fa.v = sh.vv, fa.o = sh.ov, fa.lse = sh.lse.data(), fa.pos = sh.pos.data();
        fa.pattern = &pat;
        DistBackwardArgs ba;
        if (grads) {
            ba.q = sh.qv, ba.k = sh.kv, ba.v = sh.vv, ba.o = sh.ov, ba.dout = sh.dov, ba.lse = sh.lse.data();
            ba.dq = contiguous_view(sh.dq.data(), DType::f32, sh.B, sh.S, sh.H, sh.D);
            ba.dk = contiguous_view(sh.dk.data(), DType::f32, sh.B, sh.S, sh.Hkv, sh.D);
            ba.dv = contiguous_view(sh.dv.data(), DType::f32, sh.B, sh.S, sh.Hkv, sh.D);
            ba.pos = sh.pos.data(), ba.pattern = &pat;
        }
        std::vector<DistStats> fs, bs;
        for (int it = 0; it < job.warmup + job.iters; ++it) {
            comm.barrier();
            if (job.inject_failure == me) throw std::runtime_error("injected failure");
            DistStats f, b;
            attention_forward(comm, job.dist, fa, &f);
            if (grads) attention_backward(comm, job.dist, ba, &b);
            if (it >= job.warmup) {
                fs.push_back(f);
                bs.push_back(b);
            }
        }
        // Median iteration by this rank's wall time; the table takes the slowest rank.
        auto median = [](std::vector<DistStats> v) {
            std::sort(v.begin(), v.end(), [](const DistStats& a, const DistStats& b) { return a.total_s < b.total_s; });
            return v[v.size() / 2];
        };
        const DistStats f = median(fs), b = grads ? median(bs) : DistStats{};
        const auto [err, wrong] = job.check ? check_rows(job, sh, pat, N) : std::pair<double, std::int64_t>{0.0, 0};
        const double total = f.total_s + b.total_s, wait = f.wait_s + b.wait_s, kern = f.kernel_s + b.kernel_s;
        const double peak_mb = peak_rss_mb() - rss0;
        // Per-rank numbers to rank 0: [time, wait, kernel, bytes, peak, mem ratio, work, err] as max, and wrong as sum.
        double mx[8] = {total, wait / std::max(total, 1e-12), kern, double(f.bytes_sent + b.bytes_sent), peak_mb,
                        peak_mb * 1048576.0 / sh.base_bytes(), double(work), err};
        double mn[2] = {-double(work), -kern};
        std::int64_t bad = wrong;
        if (job.per_rank) {
            for (int r = 0; r < P; ++r) {
                comm.barrier();
                if (r == me)
                    std::printf("#  rank %d rows %lld work %lld pairs: kernel %.1f ms, wait %.1f ms (%.1f%%), wall %.1f ms, "
                                "sent %.1f MB, peak +%.0f MB (%.2fx of shards + 2 K/V buffers), scratch %.0f MB\n",
                                me, static_cast<long long>(sh.S), static_cast<long long>(work), kern * 1e3, wait * 1e3,
                                100 * wait / std::max(total, 1e-12), total * 1e3, mx[3] / 1e6, peak_mb, mx[5],
                                double(std::max(f.scratch_peak_bytes, b.scratch_peak_bytes)) / 1048576.0);
                std::fflush(stdout);
            }
        }
        comm.all_reduce_max(mx, 8);
        comm.all_reduce_max(mn, 2);
        comm.all_reduce_sum(&bad, 1);
        wrong_total += bad;
        const double flops = 4.0 * double(job.head_dim) * double(job.batch * job.heads) *
                             double(pat.count_allowed(0, N, 0, N)) * (job.mode == Mode::fwd ? 1.0 : 3.5);
        if (me == 0) {
            std::printf(" %9lld %9lld %8.5f %10.2f %9.3f %10.1f %7.1f %9.0f %7.2f %10.2e %6lld\n",
                        static_cast<long long>(N), static_cast<long long>((N + P - 1) / P),
                        double(pat.count_allowed(0, N, 0, N)) / (double(N) * double(N)), mx[0] * 1e3,
                        flops / mx[0] * 1e-12, mx[3] / 1e6, 100 * mx[1], mx[4], mx[5], mx[7], static_cast<long long>(bad));
            std::printf("#   work per rank: max/min %.4f (pairs); kernel time per rank: max/min %.3f\n",
                        mx[6] / std::max(-mn[0], 1.0), mx[2] / std::max(-mn[1], 1e-12));
            std::fflush(stdout);
        }
    }
    if (me == 0)
        std::printf("# Out of bounds values : %lld %s\n", static_cast<long long>(wrong_total), wrong_total ? "FAILED" : "OK");
    return wrong_total == 0 ? 0 : 1;
}

}  // namespace longattn::bench
